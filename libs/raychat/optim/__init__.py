"""raychat's optimizer: MuonAdamW (AdamW for embeddings/lm_head/scalars, Muon with Polar Express, NorMuon
variance normalisation and cautious weight decay for the block matrices), sharded across ranks when a process
group is initialised, with no communication at world size 1. Build it with `build_optimizer(model, ...)`."""

from raychat.optim.adamw import adamw_step_
from raychat.optim.muon import POLAR_EXPRESS_COEFFS, muon_lr_multiplier, muon_momentum, muon_update_, polar_express
from raychat.optim.optimizer import MuonAdamW, build_optimizer

__all__ = ["MuonAdamW", "build_optimizer", "muon_momentum", "polar_express", "muon_update_", "adamw_step_",
           "muon_lr_multiplier", "POLAR_EXPRESS_COEFFS"]
