"""`Simulation`: synchronous robust distributed SGD (ALGORITHMS.md §1.1–§1.2).

One round t:

1. every client (Byzantine ones too, on their own data) computes its stochastic
   gradient g_i at θ_t on a mini-batch of its partition — one pass over n·B samples;
2. a ``gradient``-level attack replaces the Byzantine gradients;
3. worker momentum (optional): m_i ← β m_i + (1−β) g_i (dampened) or β m_i + g_i;
4. a ``message``-level attack crafts the f Byzantine messages from its `AttackerView`;
5. the n messages are placed in a random order (fresh each round) and the defense
   returns R_t;
6. the server steps θ_{t+1} = θ_t − γ_t (clip(R_t) + λ θ_t).

A ``data``-level attack (label flip) instead changes the Byzantine clients' mini-batches
before step 1. ``attack.until = T1`` (any attack; seed 001 App. A) stops the attack at
round T1: from then on the Byzantine clients send their own honest messages. An attack
that declares ``uses_replay = True`` (the optimal attacks of §4.14) gets
``view.simulate``, a `byzbench.sim.replay.Replay` of future rounds that leaves this run
untouched; the other attacks pay nothing for it.

Per-round metrics (training loss of the honest clients, ‖R‖, ‖R − μ_H‖, cos(R, μ_H),
learning rate) and periodic test metrics are recorded; with Byzantine clients also the
perturbation ``attack.rel_norm`` = ‖b̄ − μ_H‖/‖μ_H‖ and ``attack.cos`` = cos(b̄, μ_H) of
the mean Byzantine message b̄, every scalar the attack reports as ``attack.<name>``
(strength used), every scalar the defense reports as ``defense.<name>``, and, for rules
that select rows, ``defense.byz_kept``: the fraction of Byzantine rows kept. A run whose parameters or loss
turn non-finite stops and is reported as ``diverged`` at that round.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from byzbench import __version__
from byzbench.attacks import ATTACKS, Attack, AttackEnv, AttackerView
from byzbench.config import ExperimentConfig, check_until, resolve_device
from byzbench.data import load_dataset, make_partitioner, partition
from byzbench.defenses import AggregationContext, Defense
from byzbench.errors import ConfigError, NonFiniteInputError
from byzbench.models import bind_flat, build_model
from byzbench.sim.clients import ClientGradients, choose_strategy, evaluate
from byzbench.models.papers import ClientBatchNorm2d, update_norm_stats
from byzbench.ops.rows import column_sum
from byzbench.sim.local import LOCAL_PROCEDURES, LocalTrainer, local_batch_size
from byzbench.sim.replay import Replay
from byzbench.sim.sampler import ClientSampler
from byzbench.sim.schedule import SCHEDULES

ROUND_METRICS = ("train_loss", "agg_norm", "dist_to_honest_mean", "cos_to_honest_mean")
#: Random streams; new streams are appended so earlier ones keep their seeds.
STREAMS = ("partition", "sampling", "init", "attack", "defense", "shuffle", "dropout", "root", "probe",
           "attack_setup")
#: Size of the server's clean root dataset for rules that need a server gradient (FLTrust).
DEFAULT_ROOT_SIZE = 100

Progress = Callable[[int, int, dict[str, float]], None]


@dataclass
class RunResult:
    """Outcome of one run: status, final test metrics and the per-round history."""

    run_id: str
    config: dict[str, Any]
    status: str  # "finished" or "diverged"
    rounds_completed: int
    final_accuracy: float | None
    final_loss: float | None
    diverged_round: int | None
    wall_time_s: float
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def series(self, name: str) -> list[float]:
        return [v for _, v in self.metrics.get(name, [])]


def update_momentum(m: torch.Tensor, g: torch.Tensor, beta: float, dampening: bool = True) -> None:
    """Worker momentum in place (§1.2): m ← β m + (1−β) g (dampened) or m ← β m + g.

    Started from m = 0, the undampened form equals the dampened one times 1/(1−β) at
    every round (PyTorch/epfml form); the dampened one is seed 004's and D-SHB's.
    """
    m.mul_(beta).add_(g, alpha=(1.0 - beta) if dampening else 1.0)


def seed_streams(seed: int) -> dict[str, int]:
    """Independent 63-bit seeds for each random stream, derived from the config seed."""
    children = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {name: int(c.generate_state(1, np.uint64)[0] >> np.uint64(1)) for name, c in zip(STREAMS, children)}


class Simulation:
    """A configured run; all set-up (data, partition, model, components) happens here."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config.validate()
        cfg = config
        self.device = resolve_device(cfg.device)
        self.seeds = seed_streams(cfg.seed)
        self.n, self.f = cfg.n_clients, cfg.n_byzantine
        self.h = self.n - self.f
        self.dataset = load_dataset(cfg.data.name, cfg.data.params, "data")
        parts = partition(
            cfg.partition.name, cfg.partition.params, self.dataset.y_train.numpy(), self.n,
            np.random.default_rng(self.seeds["partition"]), "partition", groups=self.dataset.groups_train,
        )
        self.test_index = _test_index(cfg, self.dataset)
        self.parts = parts
        self.model = build_model(
            cfg.model.name, cfg.model.params, self.dataset.input_shape, self.dataset.num_classes, self.seeds["init"]
        ).to(self.device)
        self.theta, self.layout = bind_flat(self.model)
        self.theta0 = self.theta.detach().clone()
        self.d = self.layout.dim
        self.strategy = choose_strategy(cfg.strategy, self.model, self.device)
        self.gradients = ClientGradients(self.model, self.layout, self.n, self.strategy)
        attack_params = dict(cfg.attack.params)
        knowledge = attack_params.pop("knowledge", None)
        #: First round at which the Byzantine clients stop attacking and send their own
        #: honest messages (``attack.until``, seed 001 App. A); None: they never stop.
        self.until = check_until(attack_params.pop("until", None))
        self.attack: Attack = ATTACKS.create(cfg.attack.name, "attack", **attack_params)
        self.knowledge = knowledge or self.attack.knowledge
        self._lookahead = bool(getattr(self.attack, "uses_replay", False))
        if self._lookahead and self.knowledge == "own":
            raise ConfigError(
                f"attack {self.attack.name!r} replays future rounds and needs knowledge 'omniscient' "
                "(the honest clients' future batches); got 'own'", "attack.knowledge")
        self.defense = Defense.from_spec(cfg.defense, "defense")
        self.schedule = SCHEDULES.create(cfg.lr_schedule.name, "lr_schedule", **cfg.lr_schedule.params)
        self.local = LOCAL_PROCEDURES.create(cfg.local.name, "local", **cfg.local.params)
        self.batch = local_batch_size(self.local, cfg.batch_size)
        self._norm_stats = any(getattr(m, "track_running_stats", False) and isinstance(m, ClientBatchNorm2d)
                               for m in self.model.modules())
        self.trainer = LocalTrainer(self.model, self.layout, self.n, self.local, cfg.lr) if self.local.steps else None
        self.sampler = ClientSampler(parts, self.batch, _cpu_gen(self.seeds["sampling"]))
        self._alloc()
        self._root_sampler: ClientSampler | None = None
        self.server_gradient = self._server_gradient_fn() if self.defense.needs_server_gradient else None
        self._probe_gen = _gen(self.seeds["probe"], self.device)
        #: Optional ``observer(t, honest[h, d], byzantine[f, d], aggregate[d])`` called after
        #: the defense each round (analyses such as ``byzbench skew``); it must not modify them.
        self.observer: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None

    def _alloc(self) -> None:
        ds, dev = self.dataset, self.device
        self.x_train, self.y_train = ds.x_train.to(dev), ds.y_train.to(dev)
        x_test, y_test = ds.x_test, ds.y_test
        if self.test_index is not None:  # e.g. a long-tailed test set (§5.3)
            x_test, y_test = x_test[self.test_index], y_test[self.test_index]
        self.x_test, self.y_test = x_test.to(dev), y_test.to(dev)
        nb = self.n * self.batch
        self.xb = torch.empty(nb, *ds.input_shape, device=dev)
        self.yb = torch.empty(nb, dtype=torch.int64, device=dev)
        self.grads = torch.empty(self.n, self.d, device=dev)
        # Momenta: honest [:h], message slots [h:n], the Byzantine clients' own momenta [n:].
        momentum = self.config.momentum > 0
        self.momenta = torch.zeros(self.n + self.f, self.d, device=dev) if momentum else None
        self.messages = torch.empty(self.n, self.d, device=dev)
        self._identity = torch.arange(self.n, device=dev)

    def _server_gradient_fn(self) -> Callable[[], torch.Tensor]:
        """g_0 for FLTrust: the clients' procedure on a clean, class-stratified root set.

        The root set (``root_size`` of the aggregator, default 100 training samples,
        stratified by class) is drawn once from the ``root`` stream; each round the
        server samples a mini-batch of the clients' batch size from it and computes the
        gradient at θ_t with the same gradient strategy.
        """
        size = int(getattr(self.defense.aggregator, "root_size", DEFAULT_ROOT_SIZE))
        rng = np.random.default_rng(self.seeds["root"])
        root = _stratified(self.dataset.y_train.numpy(), size, rng)
        sampler = ClientSampler([root], min(self.config.batch_size, len(root)), _cpu_gen(self.seeds["root"]))
        self._root_sampler = sampler  # its state is part of a replayable round
        grads = ClientGradients(self.model, self.layout, 1, self.strategy)
        out = torch.empty(1, self.d, device=self.device)

        def server_gradient() -> torch.Tensor:
            idx = sampler.next().to(self.device)
            grads(self.x_train[idx], self.y_train[idx], out)
            return out[0]

        return server_gradient

    # ------------------------------------------------------------------ the run
    def run(self, progress: Progress | None = None) -> RunResult:
        """Train for ``config.rounds`` rounds; never raises on divergence."""
        cfg = self.config
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.seeds["dropout"])
            self.attack.reset()
            self.attack.bind(self.attack_env())
            self.defense.reset()
            history, diverged, done = self._loop(progress)
        wall = time.perf_counter() - start
        final_loss = final_acc = None
        if diverged is None:
            if not _has(history, "test_loss", done):
                self._record_eval(history, done)
            final_loss, final_acc = history["test_loss"][-1][1], history["test_accuracy"][-1][1]
            if not math.isfinite(final_loss):
                diverged = done
        return RunResult(
            run_id=cfg.run_id, config=cfg.to_dict(), status="finished" if diverged is None else "diverged",
            rounds_completed=done, final_accuracy=final_acc if diverged is None else None,
            final_loss=final_loss if diverged is None else None, diverged_round=diverged, wall_time_s=wall,
            metrics=history,
            summary={"d": self.d, "strategy": self.strategy, "knowledge": self.knowledge,
                     "rounds_per_s": done / wall if wall > 0 else float("nan"),
                     "client_procedure": "gradient" if self.trainer is None else f"local sgd, {self.local.steps} steps", "version": __version__,
                     "device": str(self.device), "n_train": int(self.dataset.y_train.numel())},
        )

    def _loop(self, progress: Progress | None) -> tuple[dict[str, list[tuple[int, float]]], int | None, int]:
        cfg = self.config
        rows: list[list[float]] = []
        history: dict[str, list[tuple[int, float]]] = {"test_loss": [], "test_accuracy": []}
        self._record_eval(history, 0)
        state = self._start()
        extra: dict[str, list[tuple[int, Any]]] = {}
        diverged: int | None = None
        done = 0
        for t in range(cfg.rounds):
            try:
                metrics, finite = self._advance(t, state)
            except NonFiniteInputError:
                diverged = t
                break
            rows.append(metrics)
            for name, value in self._diagnostics.items():
                extra.setdefault(name, []).append((t, value))
            done = t + 1
            if not finite:
                diverged = t
                break
            if done % cfg.eval_every == 0 and done < cfg.rounds:
                self._record_eval(history, done)
            if progress is not None:
                progress(done, cfg.rounds, {"train_loss": metrics[0], **_last_eval(history)})
        for j, name in enumerate(ROUND_METRICS):
            history[name] = [(t, rows[t][j]) for t in range(done)]
        history["lr"] = [(t, cfg.lr * self.schedule.factor(t)) for t in range(done)]
        for name, series in extra.items():
            history[name] = _scalars(series)
        return history, diverged, done

    def _start(self) -> dict[str, Any]:
        """Fresh per-run state: the random streams of the loop and the last aggregate."""
        self._server_generator = _gen(self.seeds["defense"], self.device)
        self._probe_gen = _gen(self.seeds["probe"], self.device)
        return {
            "shuffle": _cpu_gen(self.seeds["shuffle"]),
            "ctx": AggregationContext(generator=self._server_generator, server_gradient=self.server_gradient),
            "attack": _gen(self.seeds["attack"], self.device),
            "prev": None,
        }

    def _advance(self, t: int, state: dict[str, Any]) -> tuple[list[float], bool]:
        """One round and the server step: the round's metrics and whether θ, loss stay finite."""
        lr = self.config.lr * self.schedule.factor(t)
        aggregate, metrics = self._round(t, state["prev"], state["shuffle"], state["ctx"], state["attack"])
        self._step(aggregate, lr)
        state["prev"] = aggregate
        return metrics, math.isfinite(metrics[0]) and _all_finite(self.theta)

    def _round(self, t: int, prev: torch.Tensor | None, shuffle_gen: torch.Generator,
               ctx: AggregationContext, attack_gen: torch.Generator) -> tuple[torch.Tensor, list[float]]:
        h, f = self.h, self.f
        level = self._level(t)
        losses = self._local(level)
        diagnostics: dict[str, Any] = {}
        if level == "gradient":
            view = self._view(self.grads[:h], self.grads[h:], t, prev, attack_gen)
            self.grads[h:] = _detached(self.attack.craft(view), self.grads)
            diagnostics.update(view.diagnostics)
        slots, own = self._momentum()
        honest, byz = slots[:h], own
        if level == "message":
            view = self._view(honest, own, t, prev, attack_gen)
            if self._lookahead:
                view.simulate = Replay(self, t, prev, shuffle_gen, ctx.generator, attack_gen)
            byz = self.attack.craft(view)
            diagnostics.update(view.diagnostics)
        honest_sum, byz_sum = column_sum(honest), _row_sum(byz, f)
        mu = honest_sum.div(h)
        mu_norm = mu.norm()
        # Finite sums imply finite entries (a sum that overflows only triggers the full scan).
        pre = torch.stack([mu_norm, byz_sum.sum().to(mu_norm.dtype)]).tolist()
        ctx.round, ctx.diagnostics = t, {}
        ctx.rows_finite = math.isfinite(pre[0]) and math.isfinite(pre[1])
        ctx.column_sum = (lambda: honest_sum + byz_sum) if ctx.rows_finite else None
        messages, order = self._messages(honest, byz, slots, shuffle_gen)
        aggregate = self.defense(messages, f, ctx)
        if self.observer is not None:
            self.observer(t, honest, byz.expand(f, -1) if f else byz, aggregate)
        loss, norm, dist, dot = torch.stack(
            [losses[:h].mean(), aggregate.norm(), (aggregate - mu).norm(), torch.dot(aggregate, mu)]
        ).tolist()
        cos = dot / max(norm * pre[0], 1e-12) if math.isfinite(dot) else float("nan")
        active = level is not None
        self._diagnostics = self._round_diagnostics(diagnostics, ctx.diagnostics, byz, mu, mu_norm, order, active)
        return aggregate, [loss, norm, dist, cos]

    def _level(self, t: int) -> str | None:
        """The attack's level in round t, None when the Byzantine clients behave honestly
        (no Byzantine client, the no-attack baseline, or t ≥ ``attack.until``)."""
        if not self.f or not self.attack.perturbs or (self.until is not None and t >= self.until):
            return None
        return self.attack.level

    def _local(self, level: str | None,
               on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
        """Steps 1–2 of a round: every client's gradient (or local-SGD pseudo-gradient) at θ
        into ``self.grads``; the per-client losses on the round's (first) mini-batch.
        ``on_batch(x, y)`` sees that first mini-batch before any gradient is computed."""
        if self.trainer is None:
            x, y = self._batch(level)
            if on_batch is not None:
                on_batch(x, y)
            losses = self.gradients(x, y, self.grads)
            if self._norm_stats:  # BatchNorm running averages: once per round, honest clients
                update_norm_stats(self.model, self.xb[: self.h * self.batch], self.h)
            return losses

        def batches(k: int) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = self._batch(level)
            if k == 0 and on_batch is not None:
                on_batch(x, y)
            return x, y

        return self.trainer(self.theta, batches, self.grads)

    def _momentum(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 3: worker momentum; the ``[n, d]`` message slots (honest rows [:h]) and the
        Byzantine clients' own honest messages ``[f, d]``."""
        if self.momenta is None:
            return self.grads, self.grads[self.h:]
        beta, damp, h, n = self.config.momentum, self.config.momentum_dampening, self.h, self.n
        update_momentum(self.momenta[:h], self.grads[:h], beta, damp)
        update_momentum(self.momenta[n:], self.grads[h:], beta, damp)
        return self.momenta[:n], self.momenta[n:]

    def _messages(self, honest: torch.Tensor, byz: torch.Tensor, slots: torch.Tensor,
                  shuffle_gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``[n, d]`` messages the defense sees and the client id of each row: the
        slots themselves for order-invariant rules, a fresh random order otherwise."""
        h, f = self.h, self.f
        if self.defense.order_invariant:
            if f and byz.data_ptr() != slots[h:].data_ptr():
                slots[h:] = _detached(byz, slots).expand(f, -1)
            return slots, self._identity
        # Rules that may depend on row order see the rows in a fresh random order.
        order = torch.randperm(self.n, generator=shuffle_gen).to(self.device)
        self.messages.index_copy_(0, order[:h], honest)
        if f:
            self.messages.index_copy_(0, order[h:], byz.to(self.messages.dtype).expand(f, -1))
        return self.messages, order

    def _batch(self, level: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The next mini-batch of every client, ``[n·B, …]`` client-major; a data attack
        poisons the Byzantine clients' part."""
        idx = self.sampler.next().to(self.device)
        torch.index_select(self.x_train, 0, idx, out=self.xb)
        torch.index_select(self.y_train, 0, idx, out=self.yb)
        if level == "data":
            cut = self.h * self.batch
            xp, yp = self.attack.poison(self.xb[cut:], self.yb[cut:], self.dataset.num_classes)
            self.xb[cut:], self.yb[cut:] = xp, yp
        return self.xb, self.yb

    def _round_diagnostics(self, attack: dict[str, Any], defense: dict[str, Any], byz: torch.Tensor,
                           mu: torch.Tensor, mu_norm: torch.Tensor, order: torch.Tensor,
                           active: bool) -> dict[str, Any]:
        """Scalar attack/defense diagnostics of the round, as 0-dim tensors or floats.

        None without Byzantine clients or for the no-attack baseline; after ``attack.until``
        (``active`` False) the defense's only, the Byzantine clients being honest again.
        """
        out: dict[str, Any] = {}
        if not self.f or not self.attack.perturbs:
            return out
        if active:
            b = byz.mean(dim=0)
            out["attack.rel_norm"] = (b - mu).norm() / mu_norm.clamp_min(1e-12)
            out["attack.cos"] = torch.dot(b, mu) / (b.norm() * mu_norm).clamp_min(1e-12)
            for name, value in attack.items():
                if _is_scalar(value):
                    out[f"attack.{name}"] = value
        for name, value in defense.items():
            if name == "kept" and isinstance(value, torch.Tensor) and value.numel() == self.n:
                out["defense.byz_kept"] = value.to(self.device)[order[self.h:]].float().mean()
            elif _is_scalar(value):
                out[f"defense.{name}"] = value
        return out

    def _view(self, honest: torch.Tensor, own: torch.Tensor, t: int, prev: torch.Tensor | None,
              gen: torch.Generator) -> AttackerView:
        if self.knowledge == "own":
            # A copy: a slice of the round's buffer would still reach the honest rows
            # through its storage; the view must hold the Byzantine clients' rows only.
            own = own.clone()
            honest = own
        defense = self._probe(t) if self.knowledge == "aggregator-aware" else None
        return AttackerView(
            honest=honest, own=own, n=self.n, f=self.f, round=t, params=self.theta,
            layout=self.layout, generator=gen, knowledge=self.knowledge, prev_aggregate=prev, defense=defense,
        )

    def _probe(self, t: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """The defense as an aggregator-aware attacker may call it.

        Each call runs on a fresh copy of the server's defense state (CC's reference, …),
        so probing never changes the real run, and randomised rules draw from the
        attacker's own ``probe`` stream, never the server's private generator.
        """
        state = self.defense

        def defense(x: torch.Tensor, f: int) -> torch.Tensor:
            ctx = AggregationContext(round=t, generator=self._probe_gen, server_gradient=self.server_gradient)
            return copy.deepcopy(state)(x, f, ctx)

        return defense

    def attack_env(self) -> AttackEnv:
        """The model and data an attack may use for its one-off set-up (`Attack.bind`)."""
        model, layout = self.model, self.layout
        buffers = dict(model.named_buffers())

        def logits(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return functional_call(model, {**layout.unflatten(theta), **buffers}, (x,))

        def loss_and_grad(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            theta = theta.detach().clone().requires_grad_(True)
            loss = F.cross_entropy(logits(theta, x), y)
            (grad,) = torch.autograd.grad(loss, theta)
            return loss.detach(), grad

        return AttackEnv(
            model=model, layout=layout, theta0=self.theta0.clone(), n=self.n, f=self.f,
            client_indices=list(self.parts), x_train=self.x_train, y_train=self.y_train,
            num_classes=self.dataset.num_classes, generator=_gen(self.seeds["attack_setup"], self.device),
            loss_and_grad=loss_and_grad, logits=logits, knowledge=self.knowledge,
        )

    def _step(self, aggregate: torch.Tensor, lr: float) -> None:
        cfg = self.config
        if cfg.clip_norm is not None:
            norm = float(aggregate.norm())
            if norm > cfg.clip_norm:
                aggregate = aggregate * (cfg.clip_norm / norm)
        if cfg.weight_decay:
            aggregate = aggregate.add(self.theta, alpha=cfg.weight_decay)
        self.theta.add_(aggregate, alpha=-lr)

    def _record_eval(self, history: dict[str, list[tuple[int, float]]], rnd: int) -> None:
        loss, acc = evaluate(self.model, self.x_test, self.y_test)
        history["test_loss"].append((rnd, loss))
        history["test_accuracy"].append((rnd, acc))


def _has(history: dict[str, list[tuple[int, float]]], name: str, rnd: int) -> bool:
    return any(r == rnd for r, _ in history.get(name, []))


def _last_eval(history: dict[str, list[tuple[int, float]]]) -> dict[str, float]:
    acc = history.get("test_accuracy") or []
    return {"test_accuracy": acc[-1][1]} if acc else {}


def _test_index(cfg: ExperimentConfig, dataset: Any) -> torch.Tensor | None:
    """Test-set indices a partitioner asks for (``test_indices``, e.g. long-tail), or None."""
    splitter = make_partitioner(cfg.partition.name, cfg.partition.params, "partition")
    pick = getattr(splitter, "test_indices", None)
    if pick is None:
        return None
    idx = pick(dataset.y_test.numpy())
    return None if idx is None else torch.as_tensor(np.asarray(idx), dtype=torch.int64)


def _row_sum(byz: torch.Tensor, f: int) -> torch.Tensor:
    """Σ of the f Byzantine messages ``[d]``, given as ``[f, d]`` rows or one row (``[d]``,
    ``[1, d]`` or a stride-0 expansion) that all f send."""
    if byz.dim() == 1:
        return byz * f
    if byz.shape[0] == 1 or (byz.shape[0] and byz.stride(0) == 0):
        return byz[0] * f
    return column_sum(byz)


def _all_finite(x: torch.Tensor) -> bool:
    """Whether every entry of ``x`` is finite: a finite sum proves it; else check exactly."""
    return math.isfinite(float(x.sum())) or bool(torch.isfinite(x).all())


def _detached(rows: torch.Tensor, dest: torch.Tensor) -> torch.Tensor:
    """``rows`` as a tensor safe to copy into ``dest`` (cloned if it shares its storage)."""
    rows = rows.to(dest.dtype)
    if rows.untyped_storage().data_ptr() == dest.untyped_storage().data_ptr():
        rows = rows.clone()
    return rows


def _is_scalar(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scalars(series: list[tuple[int, Any]]) -> list[tuple[int, float]]:
    """``(round, value)`` pairs with tensors turned into floats in one device transfer."""
    values = [v.detach().reshape(()).double() if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=torch.float64)
              for _, v in series]
    flat = torch.stack([v.cpu() for v in values]).tolist() if values else []
    return [(t, x) for (t, _), x in zip(series, flat)]


def _stratified(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` indices drawn without replacement, spread over classes as evenly as possible."""
    if size < 1:
        raise ValueError(f"root_size must be ≥ 1, got {size}")
    classes = np.unique(labels)
    per = np.full(len(classes), size // len(classes))
    per[: size % len(classes)] += 1
    chosen = []
    for c, k in zip(classes, per):
        pool = np.flatnonzero(labels == c)
        chosen.append(rng.choice(pool, size=min(k, len(pool)), replace=False))
    return np.sort(np.concatenate(chosen))


def _cpu_gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gen(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)
