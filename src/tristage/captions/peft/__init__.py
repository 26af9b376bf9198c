"""Caption PEFT: the precomputed caption vectors, refined by small adapters during training.

    peft = CaptionPEFT(table, params.stage1.peft.adapters())   # or a model config's cfg.peft
    out = peft(ids, mask)          # ids (B, L) table rows, mask (B, L) bool
    out.states (B, L, dim), out.mask (B, L), out.kl (), out.ortho ()

The math (LoRA per token content, a VAE per attribute value, the KL, the orthogonality) is written
plainly in reference.py; read it first. `stage1.peft.impl` picks the implementation:
`reference` (ReferencePEFT, reference.py) or `fused` (FusedPEFT, fused.py, the default: the same
function, fast). Both have the parameters of base.py, so a state dict of one loads into the other.

    base.py       CaptionPEFT: the parameters, the table facts they read, the choice of implementation
    basis.py      each attribute row in an orthonormal basis of its value's rows (the encoders' input)
    reference.py  the seed's math, plain PyTorch
    fused.py      the fast path: plan.py (rows packed by adapter, grouping.py), node.py (one autograd
                  node, its backward written out), cache.py (the inference bake, the context cache)
    states.py     CaptionStates (what a caption module returns), enhanced_table (every row through one)
"""
from tristage.captions.peft.base import CaptionPEFT
from tristage.captions.peft.basis import value_coords
from tristage.captions.peft.fused import FusedPEFT
from tristage.captions.peft.grouping import Grouping
from tristage.captions.peft.reference import ReferencePEFT
from tristage.captions.peft.states import CaptionStates, enhanced_table

__all__ = ["CaptionPEFT", "CaptionStates", "FusedPEFT", "Grouping", "ReferencePEFT", "enhanced_table",
           "value_coords"]
