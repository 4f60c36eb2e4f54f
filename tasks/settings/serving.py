"""How the model is served (`serving:`) and how a new version reaches its traffic (`rollout:`)."""

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from tasks.settings.base import Strict


def _loopback(host: str) -> bool:
    """Whether `host` is this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServingConfig(Strict):
    """How Ray Serve answers `POST /predict` (tasks/serve); loopback unless told otherwise."""

    @model_validator(mode="after")
    def _locked_where_it_matters(self) -> "ServingConfig":
        if not _loopback(self.host) and self.api_key is None and not self.allow_unauthenticated:
            raise ValueError(
                f"serving.host {self.host!r} opens the model to the network without a key: set "
                "serving.api_key (DRIFTLOOP_SERVING__API_KEY), or serving.allow_unauthenticated: "
                "true where a gateway in front authenticates"
            )
        return self

    # how a new champion reaches traffic: at once (direct), beside the champion on a copy of
    # each request (shadow), or answering a share of requests (canary) until the `rollout:`
    # judgement promotes or rolls it back (tasks/serve/rollout.py)
    rollout: Literal["direct", "shadow", "canary"] = "direct"
    host: str = "127.0.0.1"  # 0.0.0.0 exposes the model (and the key check) to the network
    port: int = Field(8000, ge=1, le=65535)
    replicas: int = Field(1, ge=1)  # the minimum when autoscaling
    max_replicas: int | None = Field(None, ge=1)  # set (> replicas): autoscale in between
    target_ongoing_requests: float = Field(8, gt=0)  # per replica, what autoscaling aims at
    max_ongoing_requests: int = Field(32, ge=1)  # in flight per replica; the rest waits
    # waiting at the proxy per replica before a fast 503 with Retry-After; -1: no limit
    max_queued_requests: int = Field(64, ge=-1)
    retry_after_s: float = Field(1, ge=0)  # the Retry-After of that 503
    batching: bool = False  # @serve.batch: pays only when the model's per-row cost dominates
    max_batch_size: int = Field(32, ge=1)  # requests per batch
    batch_wait_timeout_s: float = Field(0.002, ge=0)  # added to p50 while a batch fills
    max_records: int = Field(10_000, ge=1)  # per request
    max_body_bytes: int = Field(16 * 2**20, ge=1024)  # larger bodies get a 413
    api_key: SecretStr | None = None  # X-API-Key; set it with DRIFTLOOP_SERVING__API_KEY
    # serve a non-loopback host with no api_key anyway (behind a gateway that authenticates)
    allow_unauthenticated: bool = False
    # a category longer than this many characters gets a 422; None: 4x the longest value of
    # the model's vocabulary for that feature, and at least 64
    max_category_chars: int | None = Field(None, ge=1)
    # every answer is written to the replica's spool segment before it leaves (a kill loses
    # nothing); a segment becomes a Parquet file of the log once it holds this many rows...
    log_flush_rows: int = Field(10_000, ge=1)
    log_flush_seconds: float = Field(10.0, gt=0, le=600)  # ...or is this old
    # what a machine crash may take: never fsync, fsync a segment as it closes, or every answer
    log_fsync: Literal["never", "segment", "always"] = "segment"
    # rows waiting to become Parquet past which a replica answers 503 (the home cannot keep up)
    log_max_pending_rows: int = Field(1_000_000, ge=1)
    quantize_int8: bool = False  # dynamic int8 nn.Linear (CPU); off: slower here (bench/RESULTS.md)
    num_cpus: float = Field(1, gt=0)  # per replica
    num_gpus: float = Field(0, ge=0)  # per replica; the model moves to the GPU when it has one


class RolloutConfig(Strict):
    """How a shadow or canary candidate is judged against the champion on live traffic
    (tasks/monitor/canary.py), and how much of it a canary answers.

    The candidate is promoted once it is not worse than the champion beyond `tolerance` with
    `confidence` (the primary metric on each model's labelled rows, a bootstrap CI of the
    difference, the gate's rule); it is rolled back as soon as it is worse with that confidence,
    when its error rate or latency is out of bounds, or when the budget (`max_rows` answered by
    it, or `max_minutes`) runs out undecided."""

    share: float = Field(0.1, gt=0, lt=1)  # of requests a canary answers
    min_rows: int = Field(200, ge=20)  # labelled rows of each model before the metric judges
    max_rows: int = Field(20_000, ge=1)  # rows the candidate answers (or shadows) at most
    max_minutes: float = Field(120, gt=0)  # undecided after this long: rolled back
    tolerance: float = Field(0.01, ge=0)  # relative loss of the primary metric still "not worse"
    confidence: float = Field(0.95, gt=0.5, lt=1)
    resamples: int = Field(500, ge=50)  # bootstrap resamples of each judgement
    seed: int = 0  # the same rows always get the same judgement
    max_error_rate: float = Field(0.01, ge=0, le=1)  # candidate failures per request it took
    # the candidate's median latency may be at most this times the champion's, plus 1 ms
    max_latency_ratio: float = Field(1.5, ge=1)
    min_requests: int = Field(50, ge=1)  # requests the candidate took before errors/latency judge
    check_seconds: float = Field(10, gt=0)  # how often the rollout flow judges
