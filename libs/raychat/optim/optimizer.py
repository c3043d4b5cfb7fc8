"""MuonAdamW: one optimizer for the whole GPT -- AdamW for embeddings, value embeddings, lm_head and scalars,
Muon for the 2-D matrices of the blocks -- with one code path for one process and for many.

Distributed (a process group of world size W > 1 is initialised): `step()` does the gradient collectives
itself, ZeRO-2 style, so the training loop never all-reduces gradients and never wraps the model in DDP:

    phase 1  launch every gradient reduction, async:
             muon group (K same-shape matrices): stack grads (K, m, n), zero-pad to ceil(K/W)*W, reduce-scatter
                 (average) -> this rank gets the mean gradient of its ceil(K/W) matrices;
             adamw param with dim 0 divisible by W (and >= MIN_SHARD_NUMEL elements): reduce-scatter its grad
                 along dim 0 -> this rank's rows;  other adamw params (scalars, odd shapes): one all-reduce
                 of their concatenated grads per group, full update replicated on every rank.
    phase 2  per group in order: wait for its reduction, update this rank's shard (Muon on its slice of
             the stack, AdamW on its rows), launch the all-gather of the updated shard, async -- so group
             i's gather overlaps group i+1's compute.
    phase 3  wait for the gathers, copy gathered matrices back into the Parameters.

At W = 1 the same phases run with no collective: the "shard" is everything, nothing is padded or gathered.
Optimizer state exists only for this rank's shard (momentum and variance of its matrices, Adam moments of
its rows), so `state_dict()` is this rank's shard: checkpoints save one file per rank, and loading checks
that rank and world size match (resuming on a different world size needs a re-shard, not done here).

Requirements in the distributed case: every rank holds identical parameters at the start (same seed or a
broadcast) and steps the same groups -- a parameter whose .grad is None is skipped by AdamW, so it must be
None on every rank; in a Muon group a missing grad counts as zeros.

Muon group state lives in `state[group["params"][0]]` (stacked buffers for the owned slice of the group);
AdamW state in `state[p]` (moments of p's shard, and the step count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from raychat.common import RaychatError, get_dist_info, print0
from raychat.optim.adamw import adamw_coefficients, adamw_step_, adamw_tensor_step_
from raychat.optim.muon import muon_update_

ADAMW_DEFAULTS = {"betas": (0.8, 0.95), "eps": 1e-10, "weight_decay": 0.0}
MUON_DEFAULTS = {"momentum": 0.95, "ns_steps": 5, "beta2": 0.9, "weight_decay": 0.0, "equilibrate": True,
                 "renormalize": True}
# AdamW params smaller than this are all-reduced and updated on every rank: their state is negligible and a
# separate reduce-scatter + all-gather per tiny tensor would cost more latency than it saves.
MIN_SHARD_NUMEL = 1024


_COMPILED: dict = {}


def _compiled(fn):
    """torch.compile(fn, dynamic=False, fullgraph=True), made once per function for the process: one graph
    per input shape (and static argument: ns_steps, the MuonEq/Muon+ flags), hyperparameters as 0-D tensor
    inputs, so the schedule's new lr/momentum/wd each step reuses the graph. Inductor fuses each elementwise
    chain (momentum, MuonEq, Muon+, NorMuon, decay; the whole AdamW step) into a few loops and leaves the Polar
    Express matmuls to the BLAS. Compiling happens on the first step (the loop does not time it)."""
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=False, fullgraph=True)
    return _COMPILED[fn]


def _hp(x: float) -> Tensor:
    """A hyperparameter as the compiled step's input: a 0-D float64 CPU tensor holds the Python float exactly
    (the step casts it to the compute dtype; a CPU scalar can feed a CUDA kernel)."""
    return torch.tensor(float(x), dtype=torch.float64)


def _grads_or_zeros(params: list[Tensor]) -> list[Tensor]:
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]


@dataclass
class _MuonReduce:
    grad_chunk: Tensor | None  # (chunk, m, n) mean grads of this rank's matrices (+ zero pad); None at W = 1
    chunk: int                # matrices per rank, ceil(K / W)
    full: Tensor | None       # (chunk * W, m, n) send buffer, reused as the all-gather output; None at W = 1
    work: object | None       # async reduce-scatter handle


@dataclass
class _AdamWItem:
    param: Tensor
    grad: Tensor              # this rank's (averaged) gradient rows, or the full averaged gradient
    sharded: bool


class MuonAdamW(torch.optim.Optimizer):
    """Combined optimizer over param groups that each carry `kind`:

    - "adamw": keys lr, betas, eps, weight_decay (defaults: ADAMW_DEFAULTS); any parameter shapes.
    - "muon": keys lr, momentum, ns_steps, beta2 (NorMuon variance EMA), weight_decay (cautious), equilibrate
      (MuonEq) and renormalize (Muon+), see muon.py;
      all parameters 2-D and of one shape (they are updated as one stacked batch; build_optimizer makes
      one group per shape).

    Every group gets "initial_lr" (= lr unless given) so loops can set group["lr"] = initial_lr * multiplier;
    loops may also set group["momentum"] (Muon warm-up, see `muon_momentum`) and group["weight_decay"].

    compile=True runs each Muon stack update and each AdamW tensor update under torch.compile (see
    `_compiled`): the same math to fp32 round-off (tested), without the eager path's one pass over memory
    per elementwise op. The first step compiles (seconds per shape on a CPU; inductor caches on disk).
    """

    def __init__(self, param_groups: list[dict], compile: bool = False):
        self.compile = compile
        super().__init__(param_groups, defaults={})

    def add_param_group(self, param_group: dict) -> None:
        """Validate a group and fill its defaults (torch's __init__ calls this for every group too)."""
        g = dict(param_group)
        g["params"] = list(g["params"])
        kind = g.get("kind")
        if kind not in ("adamw", "muon"):
            raise ValueError(f"param group {g.get('name', len(self.param_groups))!r}: kind must be 'adamw' or "
                             f"'muon', got {kind!r}")
        if "lr" not in g:
            raise ValueError(f"param group {g.get('name', len(self.param_groups))!r} ({kind}) has no lr")
        for k, v in (ADAMW_DEFAULTS if kind == "adamw" else MUON_DEFAULTS).items():
            g.setdefault(k, v)
        g.setdefault("initial_lr", g["lr"])
        if kind == "muon":
            shapes = {tuple(p.shape) for p in g["params"]}
            if len(shapes) > 1 or any(len(s) != 2 for s in shapes):
                raise ValueError(f"muon param group needs 2-D parameters of one shape, got {sorted(shapes)}")
        super().add_param_group(g)

    # ------------------------------------------------------------------ step

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        info = get_dist_info(initialized_only=True)
        rank, world = info.rank, info.world_size
        # phase 1: launch all gradient reductions (no-ops at world size 1)
        reductions = [self._muon_reduce(g, world) if g["kind"] == "muon" else self._adamw_reduce(g, world)
                      for g in self.param_groups]
        # phase 2: per group, wait for its reduction, update this rank's shard, launch its gather
        finishers = []
        for group, red in zip(self.param_groups, reductions):
            if group["kind"] == "muon":
                finishers += self._muon_update(group, red, rank, world)
            else:
                finishers += self._adamw_update(group, red, rank, world)
        # phase 3: wait for the gathers, copy back
        for finish in finishers:
            finish()
        return loss

    # ------------------------------------------------------------------ Muon

    def _muon_reduce(self, group: dict, world: int) -> _MuonReduce | None:
        params: list[Tensor] = group["params"]
        if not params or all(p.grad is None for p in params):
            return None
        K, chunk = len(params), math.ceil(len(params) / world)
        if world == 1:  # nothing to reduce; stack in phase 2, so only one group's stack is alive at a time
            return _MuonReduce(None, chunk, None, None)
        grads = _grads_or_zeros(params)
        full = grads[0].new_empty((chunk * world, *params[0].shape))  # (chunk*W, m, n), zero-padded
        torch._foreach_copy_(list(full[:K].unbind(0)), grads)
        full[K:].zero_()
        grad_chunk = full.new_empty((chunk, *params[0].shape))
        work = dist.reduce_scatter_single(grad_chunk, full, op=dist.ReduceOp.AVG, async_op=True)
        return _MuonReduce(grad_chunk, chunk, full, work)

    def _muon_update(self, group: dict, red: _MuonReduce | None, rank: int, world: int) -> list:
        if red is None:
            return []
        params: list[Tensor] = group["params"]
        if red.work is not None:
            red.work.wait()
        if red.grad_chunk is None:
            red.grad_chunk = torch.stack(_grads_or_zeros(params))  # world size 1: (K, m, n)
        owned = params[rank * red.chunk:(rank + 1) * red.chunk]  # the last ranks may own fewer (or none)
        n_own = len(owned)
        if n_own:
            m, n = params[0].shape
            state = self.state[params[0]]
            if not state:
                state["momentum_buffer"] = torch.zeros((n_own, m, n), dtype=params[0].dtype, device=params[0].device)
                vshape = (n_own, m, 1) if m >= n else (n_own, 1, n)
                vdtype = torch.float64 if params[0].dtype == torch.float64 else torch.float32  # fp32 at least
                state["second_momentum_buffer"] = torch.zeros(vshape, dtype=vdtype, device=params[0].device)
            stacked = torch.stack(owned)  # (n_own, m, n)
            hps = {k: group[k] for k in ("lr", "momentum", "beta2", "weight_decay")}
            update = muon_update_
            if self.compile:
                update, hps = _compiled(muon_update_), {k: _hp(v) for k, v in hps.items()}
            update(red.grad_chunk[:n_own], stacked, state["momentum_buffer"], state["second_momentum_buffer"],
                   **hps, ns_steps=group["ns_steps"], equilibrate=group["equilibrate"],
                   renormalize=group["renormalize"])
        if world == 1:
            torch._foreach_copy_(owned, list(stacked.unbind(0)))
            return []
        out = red.grad_chunk  # its gradients are consumed: reuse as the send buffer of the gather
        if n_own:
            out[:n_own].copy_(stacked)
        out[n_own:].zero_()
        work = dist.all_gather_single(red.full, out, async_op=True)

        def finish():
            work.wait()
            torch._foreach_copy_(params, list(red.full[:len(params)].unbind(0)))
        return [finish]

    # ------------------------------------------------------------------ AdamW

    @staticmethod
    def _shardable(p: Tensor, world: int) -> bool:
        return p.ndim >= 1 and p.shape[0] % world == 0 and p.numel() >= MIN_SHARD_NUMEL

    def _adamw_reduce(self, group: dict, world: int) -> tuple[list[_AdamWItem], list]:
        params = [p for p in group["params"] if p.grad is not None]
        if world == 1:
            return [_AdamWItem(p, p.grad, False) for p in params], []
        items, works, small = [], [], {}
        for p in params:
            if self._shardable(p, world):
                g = p.grad.new_empty((p.shape[0] // world, *p.shape[1:]))
                works.append(dist.reduce_scatter_single(g, p.grad.contiguous(), op=dist.ReduceOp.AVG, async_op=True))
                items.append(_AdamWItem(p, g, True))
            else:
                small.setdefault((p.grad.dtype, p.grad.device), []).append(p)
        for ps in small.values():  # one all-reduce for all the small grads of a dtype
            flat = torch.cat([p.grad.reshape(-1) for p in ps])
            works.append(dist.all_reduce(flat, op=dist.ReduceOp.AVG, async_op=True))
            for p, g in zip(ps, flat.split([p.numel() for p in ps])):
                items.append(_AdamWItem(p, g.view_as(p), False))
        return items, works

    def _adamw_update(self, group: dict, red: tuple[list[_AdamWItem], list], rank: int, world: int) -> list:
        items, works = red
        for w in works:
            w.wait()
        buckets: dict = {}  # (device, dtype) -> lists for one multi-tensor step
        for it in items:
            p = it.param
            if it.sharded:
                rows = p.shape[0] // world
                view = p[rank * rows:(rank + 1) * rows]  # contiguous dim-0 slice of p
            else:
                view = p
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(view)
                state["exp_avg_sq"] = torch.zeros_like(view)
            state["step"] += 1
            b = buckets.setdefault((view.device, view.dtype), ([], [], [], [], []))
            for lst, x in zip(b, (view, it.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])):
                lst.append(x)
        beta1, beta2 = group["betas"]
        if self.compile:  # one fused loop per tensor
            hps = {"lr": group["lr"], "beta1": beta1, "beta2": beta2, "eps": group["eps"],
                   "weight_decay": group["weight_decay"]}
            for views, grads, m, v, steps in buckets.values():
                for *ts, t in zip(views, grads, m, v, steps):
                    # a 0-D tensor goes in as a (1,) view: inductor takes 0-D CPU inputs for scalars and does
                    # not write its in-place updates back (seen with torch 2.13: smear_lambda never moved)
                    _compiled(adamw_tensor_step_)(*(x.view(1) if x.ndim == 0 else x for x in ts),
                                                  **{k: _hp(x) for k, x in adamw_coefficients(t, **hps).items()})
        else:
            for views, grads, m, v, steps in buckets.values():
                adamw_step_(views, grads, m, v, steps, lr=group["lr"], beta1=beta1, beta2=beta2,
                            eps=group["eps"], weight_decay=group["weight_decay"])
        finishers = []
        for it in items:
            if it.sharded:  # in-place all-gather: this rank's rows of p are already the input slice
                rows = it.param.shape[0] // world
                work = dist.all_gather_single(it.param, it.param[rank * rows:(rank + 1) * rows], async_op=True)
                finishers.append(work.wait)
        return finishers

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """This rank's shard of the state (plus hyperparameters), tagged with rank and world size."""
        sd = super().state_dict()
        info = get_dist_info(initialized_only=True)
        rank, world = info.rank, info.world_size
        sd["sharding"] = {"rank": rank, "world_size": world}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        sd = dict(state_dict)
        saved = sd.pop("sharding", None)
        info = get_dist_info(initialized_only=True)
        rank, world = info.rank, info.world_size
        if saved is not None and (saved["rank"], saved["world_size"]) != (rank, world):
            raise RaychatError(
                f"optimizer state was saved by rank {saved['rank']} of {saved['world_size']} but is being loaded "
                f"by rank {rank} of {world}: optimizer state is sharded per rank, resume with the same world size")
        super().load_state_dict(sd)


def build_optimizer(model: nn.Module, embedding_lr: float = 0.3, unembedding_lr: float = 0.008,
                    matrix_lr: float = 0.02, scalar_lr: float = 0.5, weight_decay: float = 0.0,
                    adam_betas: tuple[float, float] | None = None, compile: bool = False) -> MuonAdamW:
    """MuonAdamW over `model.param_groups()` (keys embedding, value_embeds, lm_head, matrices, scalars), with
    nanochat's current per-group settings (lr x width scale s, betas, decoupled AdamW weight decay):

    | group | lr | betas | AdamW wd |
    |---|---|---|---|
    | lm_head | unembedding_lr x s | (0.8, 0.96) | 0.01 |
    | embedding | embedding_lr x s | (0.8, 0.995) | 0.001 |
    | value_embeds | embedding_lr x s / 2 | (0.8, 0.995) | 0.01 |
    | resid_lambdas | scalar_lr / 100 | (0.8, 0.95) | 0.05 |
    | x0_lambdas | scalar_lr | (0.96, 0.95) | 0 |
    | smear and backout scalars | 0.2 | (0.8, 0.95) | 0 |

    s = 1/sqrt(n_embd / 768): Adam's step is ~lr per element whatever the width, while the effect of an
    embedding/unembedding row on the residual stream grows with its length, so wider models take smaller
    AdamW steps (muP-like); s = 1 at 768 keeps the tuned values. Embedding tables see a token's gradient only
    when it occurs, hence beta2 0.995 (a long memory for rare rows); the residual gains multiply the whole
    stream, hence their small lr and a pull towards 0 (`resid_lambdas` are O(1) numbers every layer depends on);
    x0 gains get beta1 0.96 (their gradient is noisy and small). The smear/backout scalars keep a fixed lr 0.2
    (nanochat does not batch-scale them). The scalars group falls back to scalar_lr with (0.8, 0.95) for a
    model without these attributes. adam_betas, when given, replaces every AdamW group's betas (the old
    single-betas behaviour).

    Muon for the block matrices: matrix_lr, one group per shape; momentum 0.95 (the loop schedules it with
    `muon_momentum`), 5 Polar Express iterations, NorMuon beta2 0.9, MuonEq + Muon+; its update is already
    scale-free (orthogonal, then shape-scaled by max(1, rows/cols)^0.5 in muon.py). weight_decay is the
    cautious decay of the Muon groups (scheduled by the loop via group["weight_decay"]). compile: see MuonAdamW.
    """
    named = model.param_groups()
    expected = {"embedding", "value_embeds", "lm_head", "matrices", "scalars"}
    if set(named) - expected:
        raise ValueError(f"model.param_groups() has unknown keys {sorted(set(named) - expected)}; "
                         f"expected {sorted(expected)}")
    seen: dict[int, str] = {}
    for name, ps in named.items():
        for p in ps:
            if id(p) in seen:
                raise ValueError(f"a parameter of shape {tuple(p.shape)} is in both {seen[id(p)]!r} and {name!r}")
            seen[id(p)] = name
    missing = [tuple(p.shape) for p in model.parameters() if id(p) not in seen]
    if missing:
        raise ValueError(f"model.param_groups() misses {len(missing)} parameters, shapes {missing[:5]}")

    n_embd = model.config.n_embd
    scale = (n_embd / 768) ** -0.5
    print0(f"AdamW lr scale 1/sqrt({n_embd}/768) = {scale:.6f} (embedding, value_embeds, lm_head)")
    scalars = named.get("scalars", [])
    resid = [p for p in scalars if p is getattr(model, "resid_lambdas", None)]
    x0 = [p for p in scalars if p is getattr(model, "x0_lambdas", None)]
    gates = [p for p in scalars if not any(p is q for q in resid + x0)]
    gate_lr = 0.2 if resid or x0 else scalar_lr  # a model without the named gains: one plain scalars group

    def adamw(name, params, lr, betas, wd):
        return {"kind": "adamw", "name": name, "params": params, "lr": lr, "eps": 1e-10, "weight_decay": wd,
                "betas": tuple(adam_betas) if adam_betas is not None else betas}

    groups = [
        adamw("lm_head", named.get("lm_head", []), unembedding_lr * scale, (0.8, 0.96), 0.01),
        adamw("embedding", named.get("embedding", []), embedding_lr * scale, (0.8, 0.995), 0.001),
        adamw("value_embeds", named.get("value_embeds", []), embedding_lr * scale * 0.5, (0.8, 0.995), 0.01),
        adamw("resid_lambdas", resid, scalar_lr * 0.01, (0.8, 0.95), 0.05),
        adamw("x0_lambdas", x0, scalar_lr, (0.96, 0.95), 0.0),
        adamw("scalars", gates, gate_lr, (0.8, 0.95), 0.0),
    ]
    matrices = named.get("matrices", [])
    bad = [tuple(p.shape) for p in matrices if p.ndim != 2]
    if bad:
        raise ValueError(f"'matrices' must hold 2-D parameters only (Muon), got shapes {bad}")
    for shape in sorted({tuple(p.shape) for p in matrices}):
        groups.append({"kind": "muon", "name": f"matrices{shape[0]}x{shape[1]}", "lr": matrix_lr,
                       "params": [p for p in matrices if tuple(p.shape) == shape], **MUON_DEFAULTS,
                       "weight_decay": weight_decay})
    return MuonAdamW([g for g in groups if g["params"]], compile=compile)
