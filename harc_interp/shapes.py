"""The one dimension vocabulary for jaxtyping annotations across the package.

batch: prompts in a forward batch; pos: token positions; d_model: residual width;
layer: residual slots (block inputs plus the final output); npos: named positions kept;
prompt: prompts in a cached set.
"""

from jaxtyping import Float, Int
from torch import Tensor

Resid = Float[Tensor, "batch pos d_model"]
TokenIds = Int[Tensor, "batch pos"]
Mask = Int[Tensor, "batch pos"]
PositionIndex = Int[Tensor, "batch npos"]
CachedBatch = Float[Tensor, "batch layer npos d_model"]
CachedResid = Float[Tensor, "prompt layer npos d_model"]
Direction = Float[Tensor, " d_model"]
