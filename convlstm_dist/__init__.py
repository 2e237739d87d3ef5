"""convlstm-dist: distributed ConvLSTM (Shi et al. 2015) precipitation nowcasting on Ray.

Subpackages have one purpose each (see README): ``models`` (pure torch), ``data`` (archive,
readers, Ray Data), ``train`` (Ray Train), ``tune`` (Ray Tune), ``tracking`` (MLflow),
``verify`` (skill scores, baselines, the paper's Table 1), ``nowcast`` (a trained model: forecasts
and evaluation), ``commands`` (the command line: parse arguments, call the library). Each names its
public API in ``__all__``; other packages import only those names.
"""

__version__ = "0.1.0"
