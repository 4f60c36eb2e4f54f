"""The local stack: a Prefect server (API + UI) and a Ray head, bound to 127.0.0.1 only.

    stack = up(home=Path(".driftloop"))       # starts what is not running, waits until it answers
    env = connection_env(home=Path(".driftloop"))  # PREFECT_API_URL, RAY_ADDRESS, RAY_AUTH_MODE..
    use(home=Path(".driftloop"))              # sets those in os.environ, unless the user set theirs
    down(home=Path(".driftloop"))             # stops exactly what `up` started, nothing else

Each service is a child process in its own session (process group), logging to
`<home>/logs/<name>.log`, recorded in `<home>/run/stack.json` (written atomically). `down` stops
those process groups and their descendants; it never runs a bare `ray stop`, which would end every
Ray on the machine. A later stage adds a service by adding one `Service` to `stack_services`.

The modules: `api` (this face), `services` (what runs: commands, ports, environment, Ray's temp
dir and token), `processes` (starting, probing and stopping processes; the state file). Below
tasks.settings: it imports only the leaves (tasks.errors, tasks.files).
"""

from tasks.stack.api import (
    ServiceStatus,
    StackStatus,
    connection_env,
    down,
    local_home,
    start,
    status,
    up,
    use,
)
from tasks.stack.processes import HOST, STATE_FILE, Service, StackError
from tasks.stack.services import (
    DASHBOARD_PORT,
    PREFECT_PORT,
    RAY_PORT,
    RUNNER_PORT,
    TOKEN_FILE,
    deployments_service,
    ensure_ray_token,
    link_ray_temp_dir,
    prefect_service,
    ray_service,
    ray_temp_dir,
    stack_services,
    token_path,
)

__all__ = [
    "DASHBOARD_PORT",
    "HOST",
    "PREFECT_PORT",
    "RAY_PORT",
    "RUNNER_PORT",
    "STATE_FILE",
    "TOKEN_FILE",
    "Service",
    "ServiceStatus",
    "StackError",
    "StackStatus",
    "connection_env",
    "deployments_service",
    "down",
    "ensure_ray_token",
    "link_ray_temp_dir",
    "local_home",
    "prefect_service",
    "ray_service",
    "ray_temp_dir",
    "stack_services",
    "start",
    "status",
    "token_path",
    "up",
    "use",
]
