"""On a Ray cluster, through the Jobs API: `submit JOB`, `status ID`, `logs ID`."""
from __future__ import annotations


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
    from deepscope.submit import submit

    submit(a.job, a.address, a.wait)


def cmd_status(a):
    from deepscope.submit import status

    print(status(a.address, a.job_id))


def cmd_logs(a):
    from deepscope.submit import _client, logs_follow

    print("".join(logs_follow(a.address, a.job_id)) if a.follow else _client(a.address).get_job_logs(a.job_id), end="")
