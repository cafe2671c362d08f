"""Per-device memory plan of K-client LoRA fine-tuning, before renting the chips.

  python launch/memory_plan.py --model=llama3_70b --mesh=fsdp:8 --device=h100 \
      --clients=4 --lora_rank=16 --batch=1 --seq_len=2048
  python launch/memory_plan.py --model=llama3_70b --topology=v5p-64 --skip_aot
  python launch/memory_plan.py --model=llama3_70b --topology=v5e-256 --clients=4 \
      --choose_mesh --weight_bytes=1 --skip_aot      # which mesh, and why; int8 base

Prints the exact per-device bytes of the frozen base, the adapters, Adam state
and gradients, an activation estimate, the capacity and FITS / DOES NOT FIT
(flock_jax/memory/, docs/sharding.md). --choose_mesh lets the plan pick the mesh
and print why; --weight_bytes=1 counts an int8 frozen base (flock_jax/model/quant.py). Unless --skip_aot, it then compiles
the step ahead of time on fake CPU devices, one per chip (no allocation), and
prints XLA's memory_analysis; with libtpu installed, --aot_tpu compiles for the
TPU topology itself.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="llama3_70b", help="model preset (flock_jax.model.PRESETS)")
  p.add_argument(
      "--topology",
      default=None,
      help="'8xh100', 'h100', 'v5p-64' (64 TensorCores "
      "= 32 chips), 'v5e-256' (256 chips), 'v4-32', 'v6e-64'",
  )
  p.add_argument("--device", default=None, help="device kind when --topology is not given")
  p.add_argument(
      "--mesh",
      default=None,
      help="e.g. 'fsdp:8' or 'clients:2,fsdp:2,tensor:2' "
      "(default: tensor within a host, fsdp across hosts)",
  )
  p.add_argument("--clients", type=int, default=1, help="K clients trained at once (vmapped)")
  p.add_argument("--lora_rank", type=int, default=16)
  p.add_argument("--lora_targets", default="q,k,v,o,gate,up,down")
  p.add_argument("--batch", type=int, default=1, help="sequences per client per step")
  p.add_argument("--seq_len", type=int, default=2048)
  p.add_argument(
      "--remat",
      default=None,
      choices=["none", "full", "dots"],
      help="override the preset's rematerialisation policy",
  )
  p.add_argument("--logits_chunk", type=int, default=0, help="tokens per logits chunk (0: none)")
  p.add_argument("--kv_len", type=int, default=0, help="also count a generation KV cache this long")
  p.add_argument("--usable_fraction", type=float, default=0.9)
  p.add_argument(
      "--weight_bytes",
      type=float,
      default=None,
      help="bytes per frozen projection weight (default: the preset's dtype; 1: int8 base "
      "with float32 per-channel scales)",
  )
  p.add_argument(
      "--quantize",
      default=None,
      choices=["none", "int8"],
      help="frozen base storage (LlamaConfig.quantize): int8 is counted at 1 B/weight and "
      "compiled as int8 by the AOT step",
  )
  p.add_argument(
      "--choose_mesh",
      action="store_true",
      help="let the plan choose the mesh (and print every candidate and why)",
  )
  p.add_argument("--skip_aot", action="store_true", help="skip the ahead-of-time compile")
  p.add_argument("--aot_tpu", action="store_true", help="compile for the TPU topology (libtpu)")
  p.add_argument(
      "--aot_max_devices",
      type=int,
      default=512,
      help="largest fake CPU device count for the AOT compile",
  )
  a = p.parse_args(argv)
  if a.topology is None and a.device is None:
    p.error("give --topology (e.g. 8xh100) or --device (with --mesh, or 1 device)")
  if a.choose_mesh and a.mesh:
    p.error("--choose_mesh and --mesh exclude each other")
  if a.choose_mesh and not a.topology:
    p.error("--choose_mesh needs --topology")
  return a


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  from flock_jax import memory as M  # imports jax; no backend is started yet

  mesh_shape = M.parse_mesh(args.mesh) if args.mesh else None
  if args.topology:
    topo = M.parse_topology(args.topology)
    if args.device and M.accelerator(args.device) != topo.accelerator:
      raise SystemExit(f"--device={args.device} contradicts --topology={args.topology}")
  else:
    n = 1
    for s in (mesh_shape or {}).values():
      n *= s
    topo = M.parse_topology(f"{n}x{args.device}")
  chips = topo.chips
  if not args.skip_aot and not args.aot_tpu:
    import jax

    if chips > args.aot_max_devices:
      print(f"AOT skipped: {chips} chips > --aot_max_devices={args.aot_max_devices}")
      args.skip_aot = True
    else:
      try:  # one fake CPU device per chip; only possible before the backend starts
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", chips)
      except RuntimeError as e:
        print(f"note: could not set {chips} fake CPU devices ({e})")

  from flock_jax import sharding as S
  from flock_jax.model import LoraConfig, preset

  cfg = preset(args.model)
  if args.remat:
    cfg = cfg.replace(remat=args.remat)
  if args.quantize:
    cfg = cfg.replace(quantize=args.quantize)
  lcfg = LoraConfig(
      rank=args.lora_rank,
      alpha=2.0 * args.lora_rank,
      targets=tuple(t for t in args.lora_targets.split(",") if t),
  )
  kw = dict(
      seq_len=args.seq_len,
      logits_chunk=args.logits_chunk,
      usable_fraction=args.usable_fraction,
      weight_bytes=args.weight_bytes,
  )
  if args.choose_mesh:
    choice = M.choose_mesh(cfg, lcfg, topo, clients=args.clients, batch=args.batch, **kw)
    print(M.format_choice(choice))
    if not choice.mesh:
      return 1
    mesh_shape = choice.mesh
  base = "" if args.weight_bytes is None else f", base {args.weight_bytes:g} B/weight"
  base += ", int8 base" if cfg.quantize == "int8" else ""
  plan = M.plan_memory(
      cfg,
      lcfg,
      topo,
      mesh_shape,
      clients=args.clients,
      batch=args.batch,
      kv_len=args.kv_len,
      title=f"{args.model}: K={args.clients} clients, LoRA rank {args.lora_rank}, "
      f"batch {args.batch}x{args.seq_len} per client, remat {cfg.remat}{base}",
      **kw,
  )
  print(M.format_plan(plan))
  if args.skip_aot and not args.aot_tpu:
    return 0
  if args.aot_tpu:
    try:
      mesh = M.tpu_topology_mesh(topo, plan.mesh)
    except RuntimeError as e:
      print(f"TPU AOT unavailable: {e}")
      return 0
  else:
    import jax

    if len(jax.devices()) != chips:
      print(
          f"AOT skipped: need {chips} devices, this process has {len(jax.devices())} "
          "(run it as a fresh process)"
      )
      return 0
    mesh = S.make_mesh(plan.mesh)
  print(
      M.format_aot(
          M.aot_memory_analysis(
              cfg,
              lcfg,
              mesh,
              clients=args.clients,
              batch=args.batch,
              seq_len=args.seq_len,
              chunk_size=args.logits_chunk or None,
          )
      )
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
