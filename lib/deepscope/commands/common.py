"""Options shared by the commands that run a job: declared once."""
from __future__ import annotations


def model_options(p, default: str | None = "lite0", seed: bool = False) -> None:
    p.add_argument("--model", default=default, help="lite0 | torchvision:NAME | timm:NAME | torchscript:FILE")
    p.add_argument("--weights", help="weights file (default: the model's own); 'random' for tests")
    if seed:
        p.add_argument("--seed", type=int, help="random seed (default 0): the same seed gives the same picture")


def run_options(p, precision: bool = True, errors: bool = False) -> None:
    """How a job runs: --batch-size, --actors, --address (and --precision, --max-error-rate, --verify)."""
    p.add_argument("--batch-size", type=int, help="items per model batch (default 64)")
    p.add_argument("--actors", type=int, help="CPU model actors when there is no GPU (default 1)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a new local cluster)")
    p.add_argument("--executor", choices=["auto", "local", "ray"],
                   help="local: this machine, no Ray; ray: Ray actors; auto (default): Ray when there is an "
                        "address, several actors or several GPUs, else local")
    if precision:
        p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="autocast precision (default fp32)")
    if errors:
        p.add_argument("--max-error-rate", type=float, help="fail the job when more inputs fail (default 0.5)")
        p.add_argument("--verify", action="store_true", default=None,
                       help="also check every committed part's sha256 before running (sizes are always checked)")


def run_section(a) -> dict:
    """The [run] section of a job from the run options given."""
    keys = {k: getattr(a, k, None) for k in ("batch_size", "actors", "address", "executor", "precision", "max_error_rate", "verify")}
    return {k: v for k, v in keys.items() if v is not None}
