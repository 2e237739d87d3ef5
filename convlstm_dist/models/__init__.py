"""Pure-torch models (no Ray, MLflow or I/O): ConvLSTM cell, encoder–forecaster, FC-LSTM
baseline, fast path, masked losses, FLOP counts. Layout B, T, C, H, W.

    model = build_model("convlstm", in_channels=1, hidden=[128, 64, 64], input_kernel=[5, 5, 5],
                        state_kernel=[5, 5, 5], patch=4, height=64, width=64)
    y, state = model(x, n_out=10)          # x (B, 10, 1, 64, 64) -> y (B, 10, 1, 64, 64)
    loss = get_loss("bce")(y, target)      # NaN targets are masked
"""

from convlstm_dist.models.cell import ConvLSTMCell
from convlstm_dist.models.encoder_forecaster import EncoderForecaster
from convlstm_dist.models.fc_lstm import FCLSTM, FCLSTMCell
from convlstm_dist.models.flops import count_flops, forward_flops
from convlstm_dist.models.lagrangian import FRAMES, lagrangian_source_valid
from convlstm_dist.models.losses import BALANCED_LOSSES, LOSSES, available_losses, bce_per_sequence, get_loss, hko7_weights
from convlstm_dist.models.motion import from_uv
from convlstm_dist.models.registry import MODELS, available_models, build_model

__all__ = [
    "ConvLSTMCell", "EncoderForecaster", "FCLSTM", "FCLSTMCell",
    "build_model", "MODELS", "get_loss", "LOSSES", "bce_per_sequence", "hko7_weights", "count_flops", "forward_flops",
    "lagrangian_source_valid", "FRAMES", "available_models", "available_losses", "BALANCED_LOSSES", "from_uv",
]
