"""convlstm-dist: distributed ConvLSTM (Shi et al. 2015) precipitation nowcasting on Ray.

Subpackages have one purpose each (see README): ``models`` (pure torch), ``data`` (archive,
readers, Ray Data), ``train`` (Ray Train), ``tune`` (Ray Tune), ``tracking`` (MLflow),
``verify`` (skill scores and baselines).
"""

__version__ = "0.1.0"
