"""One typed settings object: `driftloop.yaml`, overridden by `DRIFTLOOP_*` environment variables.

    settings = load_settings(Path("driftloop.yaml"))   # loaded once, then passed down

Nested keys are overridden with a double underscore: `DRIFTLOOP_TRAINING__EPOCHS=3`,
`DRIFTLOOP_HOME=/tmp/dl`. Bad configuration fails here, at load time, with a message that names
the key and says what is allowed; nothing deeper in the code reads the environment.
"""

from tasks.settings.load import load_settings, load_stack_settings, resolve_features
from tasks.settings.sections import (
    CONFIG_FILE,
    ROLE_KINDS,
    ConfigError,
    DatasetConfig,
    DriftMethod,
    EvaluationConfig,
    Features,
    GateConfig,
    MetricName,
    MonitoringConfig,
    RetrainingConfig,
    RetrainOn,
    Role,
    Settings,
    SplitConfig,
    StackConfig,
    TrainingConfig,
    ValidationConfig,
)
from tasks.settings.serving import RolloutConfig, ServingConfig

__all__ = [
    "CONFIG_FILE",
    "ROLE_KINDS",
    "ConfigError",
    "DatasetConfig",
    "DriftMethod",
    "EvaluationConfig",
    "Features",
    "GateConfig",
    "MetricName",
    "MonitoringConfig",
    "RetrainOn",
    "RetrainingConfig",
    "Role",
    "RolloutConfig",
    "ServingConfig",
    "Settings",
    "SplitConfig",
    "StackConfig",
    "TrainingConfig",
    "ValidationConfig",
    "load_settings",
    "load_stack_settings",
    "resolve_features",
]
