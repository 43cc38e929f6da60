"""CPU step time of LoRA vs full fine-tuning of the tiny DiT, interleaved in one process.

    python tools/bench_lora.py [--rounds 20] [--config configs/tiny.py]

Builds the trainer of the config (full) and of its `:lora` arm from the same pretrained DiT,
feeds both the same batches of demo scenes (rendered in memory), and times their steps in
alternation (after 3 warm-up steps each), so that the load of the machine falls on both alike;
prints the median step times and their ratio.
"""

from __future__ import annotations

import time

from absl import flags

from viewpoint_jax.common import cli
from viewpoint_jax.common.cli import refuse_positional


def define_flags() -> None:
    flags.DEFINE_integer("rounds", 20, "timed steps of each trainer", lower_bound=1)
    flags.DEFINE_string("config", "configs/tiny.py", "a config file with a :lora arm")


def main(argv: list[str]) -> int:
    refuse_positional(argv)
    args = flags.FLAGS

    import jax
    import numpy as np

    from viewpoint_jax.data import demo_dataset, pipeline
    from viewpoint_jax.setup.config import load_config_file, mesh_and_rules
    from viewpoint_jax.training import loop

    configs = {"full": load_config_file(args.config)}
    configs["lora"] = load_config_file(f"{args.config}:lora")
    for config in configs.values():
        config.data.image_ratio = 0.0  # every step a clip: one program each
    data = configs["full"].data
    records = demo_dataset.scene_records(8, data.num_frames + 2, data.erp_height)
    iterator = pipeline.make_train_iterator(data, data_source=records)
    batches = [next(iterator) for _ in range(4)]
    devices = jax.devices()[:1]
    trainers, states = {}, {}
    for name, config in configs.items():
        config.mesh.fsdp = 1
        trainers[name] = loop.make_trainer(config, *mesh_and_rules(config, devices))
        states[name] = trainers[name].init_state()
    times = {name: [] for name in trainers}
    for round_index in range(3 + args.rounds):
        for name, trainer in trainers.items():
            batch = trainer.device_batch(batches[round_index % len(batches)])
            start = time.perf_counter()
            states[name], metrics = trainer.step(states[name], batch)
            jax.block_until_ready(metrics["loss"])
            if round_index >= 3:
                times[name].append(time.perf_counter() - start)
    medians = {name: float(np.median(t)) for name, t in times.items()}
    for name, median in medians.items():
        print(f"{name}: median step {median * 1000:.1f} ms over {args.rounds} steps")
    print(f"LoRA / full step time: {medians['lora'] / medians['full']:.3f}")
    return 0


if __name__ == "__main__":
    cli.run(main, define_flags)
