"""On a Ray cluster, through the Jobs API: `submit JOB`, `status ID`, `logs ID`.

The deepscope package travels in the job's runtime environment (py_modules), so the
cluster runs this exact version; the job file travels as the working directory. Paths in
the job file (dataset, out) must be visible to the cluster: shared storage or s3://.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from deepscope.errors import UserError


def add_commands(sub) -> None:
    s = sub.add_parser("submit", help="submit a job file to a Ray cluster (Ray Jobs API)")
    s.add_argument("job")
    s.add_argument("--address", required=True, help="Jobs API, e.g. http://127.0.0.1:8265 (port-forwarded)")
    s.add_argument("--wait", action="store_true", help="follow the logs until the job ends")
    s.set_defaults(fn="deepscope.commands.cluster:cmd_submit")

    st = sub.add_parser("status", help="status of a submitted job")
    st.add_argument("job_id")
    st.add_argument("--address", required=True)
    st.set_defaults(fn="deepscope.commands.cluster:cmd_status")

    lg = sub.add_parser("logs", help="logs of a submitted job")
    lg.add_argument("job_id")
    lg.add_argument("--address", required=True)
    lg.add_argument("--follow", action="store_true")
    lg.set_defaults(fn="deepscope.commands.cluster:cmd_logs")


def cmd_submit(a):
    submit(a.job, a.address, a.wait)


def cmd_status(a):
    print(status(a.address, a.job_id))


def cmd_logs(a):
    print("".join(logs_follow(a.address, a.job_id)) if a.follow else _client(a.address).get_job_logs(a.job_id), end="")


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # connection refused, bad auth token, ...
        raise UserError(f"cannot reach the Ray Jobs API at {address}: {str(e).splitlines()[0][:300]}") from None


def submit(job_file: str, address: str, wait: bool = False) -> str:
    import deepscope
    from deepscope import job as jobmod

    jobmod.load(job_file)  # validate here: a typo should not cost a cluster round trip
    client = _client(address)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(job_file, Path(tmp) / "job.toml")
        for attempt in range(30):
            try:
                job_id = client.submit_job(
                    # the driver runs from a folder of its own: Ray sets the job's working_dir up
                    # again when the job's workers start, and a driver still inside it is left in a
                    # deleted directory (any later os.getcwd(), e.g. in a lazy import, then fails)
                    entrypoint='d="$(mktemp -d)" && cp job.toml "$d/" && cd "$d" && '
                               'python -m deepscope.cli run job.toml',
                    runtime_env={"working_dir": tmp, "py_modules": [str(Path(deepscope.__file__).parent)]},
                    metadata={"deepscope_job": Path(job_file).name},
                )
                break
            except RuntimeError as e:  # a head that just started has no job agent yet
                if "No available agent" not in str(e) or attempt == 29:
                    raise UserError(f"the Jobs API at {address} refused the job: {str(e).splitlines()[0][:300]}") from None
                time.sleep(2)
    print(job_id)
    if wait:
        for line in logs_follow(address, job_id):
            print(line, end="")
        print(status(address, job_id))
    return job_id


def status(address: str, job_id: str) -> str:
    info = _client(address).get_job_info(job_id)
    return f"{job_id}: {info.status}" + (f" ({info.message})" if info.message else "")


def logs_follow(address: str, job_id: str):
    import asyncio

    client = _client(address)

    async def tail():
        out = []
        async for chunk in client.tail_job_logs(job_id):
            out.append(chunk)
        return out

    yield from asyncio.run(tail())
