"""Messages of the registration service: projects, serialized flows, flows."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, JsonValue, PrivateAttr, StringConstraints, model_validator

from flowbus import clocks, subjects
from flowbus.run_env import check_run_env
from flowbus.schemas.common import (
    ENV_VALUE_MAX,
    INT_COLUMN_MAX,
    LABEL_MAX,
    LIST_LIMIT_DEFAULT,
    LIST_LIMIT_MAX,
    MAX_CLOCK_DATES,
    MAX_CLOCKS,
    MAX_EDGES,
    MAX_ENV_VARS,
    MAX_LABELS,
    MAX_OFFSET,
    MAX_PARAMETERS,
    MAX_TASK_TAGS,
    MAX_TASKS,
    NAME_MAX,
    TEXT_MAX,
    Json,
    Message,
    at_most,
    duplicates,
    is_none,
    shallow,
)

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=NAME_MAX)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=LABEL_MAX)]
Labels = Annotated[list[Label], at_most(MAX_LABELS, "labels")]
Key = Annotated[str, StringConstraints(min_length=1, max_length=NAME_MAX)]
# A parameter's name as a key of a parameters object (kept as given, unlike Name).
ParameterKey = Annotated[str, StringConstraints(max_length=NAME_MAX)]
# Parameter values by name: at most MAX_PARAMETERS of them, each nested at most MAX_JSON_DEPTH levels.
ParameterValues = Annotated[dict[ParameterKey, JsonValue], shallow, at_most(MAX_PARAMETERS, "parameters")]
# Any other JSON object of a command (a run's context, a log's info): the same bounds.
JsonObject = Annotated[dict[ParameterKey, JsonValue], shallow, at_most(MAX_PARAMETERS, "entries")]
# The page of a list command: ``limit`` items from ``offset`` on.
Limit = Annotated[int, Field(ge=1, le=LIST_LIMIT_MAX)]
Offset = Annotated[int, Field(ge=0, le=MAX_OFFSET)]


# ---- the serialized flow (what `flow.serialize()` produces) ---------------


class ParameterSpec(Message):
    name: Name
    required: bool = False
    default: Json = None


class TaskSpec(Message):
    slug: Name
    name: Name
    # What kind of task it is, as its framework names it (Prefect 1.x: the
    # task's class, e.g. prefect.core.parameter.Parameter); "" when unnamed.
    type: str = Field(default="", max_length=NAME_MAX)
    max_retries: int = Field(default=0, ge=0, le=INT_COLUMN_MAX)
    retry_delay_seconds: float | None = Field(default=None, ge=0)
    tags: Annotated[list[Label], at_most(MAX_TASK_TAGS, "tags")] = Field(default_factory=list)


class EdgeSpec(Message):
    upstream: Name
    downstream: Name
    key: str | None = Field(default=None, max_length=NAME_MAX)


class StorageSpec(Message):
    """Where the flow's code lives. The code itself never reaches the backend.

    ``prefect``: a flow registered by Prefect 1.x, whose storage (``prefect``,
    as Prefect serialized it) only a Prefect agent can load; flowbus agents
    leave its runs to one (docs/prefect1.md).
    """

    type: Literal["script", "module", "prefect"]
    path: str | None = Field(default=None, max_length=4096)
    module: str | None = Field(default=None, max_length=NAME_MAX)
    prefect: JsonObject | None = Field(default=None, exclude_if=is_none)

    @model_validator(mode="after")
    def _location(self) -> StorageSpec:
        if self.type == "script" and not self.path:
            raise ValueError("script storage needs a path")
        if self.type == "module" and not self.module:
            raise ValueError("module storage needs a module")
        if (self.type == "prefect") != (self.prefect is not None):
            raise ValueError("prefect storage, and only it, carries the storage Prefect serialized")
        return self


class RunConfigSpec(Message):
    labels: Labels | None = None
    # A Prefect 1.x run config as Prefect serialized it (its labels and env are
    # the fields above); Prefect clients read it back as they sent it.
    prefect: JsonObject | None = Field(default=None, exclude_if=is_none)
    env: (
        Annotated[
            dict[
                Annotated[str, StringConstraints(max_length=NAME_MAX)], Annotated[str, Field(max_length=ENV_VALUE_MAX)]
            ],
            at_most(MAX_ENV_VARS, "environment variables"),
        ]
        | None
    ) = None


def _env_allowed(config: RunConfigSpec) -> RunConfigSpec:
    check_run_env(config.env)
    # A Prefect agent gives the flow's process the env of the Prefect run
    # config: it must be the env just checked.
    if config.prefect is not None and (config.prefect.get("env") or None) != (config.env or None):
        raise ValueError("a Prefect run config's env must be the run config's env")
    return config


# A run config a caller gives (registration, run creation): its env must pass
# flowbus.run_env. Read back from the database a run config is not checked, so
# that a row stored before the rule still loads; the agent filters that one.
CheckedRunConfig = Annotated[RunConfigSpec, AfterValidator(_env_allowed)]


# The fields each type of clock may set, besides type, parameter_defaults and labels.
_CLOCK_FIELDS: dict[str, frozenset[str]] = {
    "cron": frozenset({"cron", "timezone"}),
    "interval": frozenset({"interval_seconds", "start_date", "timezone"}),
    "dates": frozenset({"dates"}),
}
_CLOCK_OPTIONS = ("cron", "timezone", "interval_seconds", "start_date", "dates")
# Past this an interval's times leave the calendar (year 9999) within a few of them.
_INTERVAL_MAX_SECONDS = 100 * 366 * 86_400


class ClockSpec(Message):
    """One clock of a schedule; what its fields mean: docs/semantics.md, "Schedules"."""

    type: Literal["cron", "interval", "dates"]
    cron: str | None = Field(default=None, max_length=NAME_MAX)
    timezone: str | None = Field(default=None, max_length=NAME_MAX)
    interval_seconds: float | None = Field(default=None, gt=0, le=_INTERVAL_MAX_SECONDS)
    start_date: datetime | None = None
    dates: Annotated[list[datetime], at_most(MAX_CLOCK_DATES, "dates")] | None = None
    parameter_defaults: ParameterValues = Field(default_factory=dict)
    labels: Labels | None = None

    @model_validator(mode="after")
    def _fits_its_type(self) -> ClockSpec:
        stray = [f for f in _CLOCK_OPTIONS if f not in _CLOCK_FIELDS[self.type] and getattr(self, f) is not None]
        if stray:
            raise ValueError(f"{self.type} clocks do not take {', '.join(stray)}")
        if self.timezone is not None:
            clocks.zone(self.timezone)
        if self.type == "cron":
            if self.cron is None:
                raise ValueError("a cron clock needs cron")
            clocks.cron_fields(self.cron)
        elif self.type == "interval":
            if self.interval_seconds is None:
                raise ValueError("an interval clock needs interval_seconds")
            if not timedelta(seconds=self.interval_seconds):
                raise ValueError("interval_seconds must be at least one microsecond")
            if self.start_date is not None and not clocks.is_aware(self.start_date):
                raise ValueError("start_date must be timezone-aware")
        else:
            if not self.dates:
                raise ValueError("a dates clock needs at least one date")
            if not all(clocks.is_aware(d) for d in self.dates):
                raise ValueError("dates must be timezone-aware")
        return self


class ScheduleSpec(Message):
    clocks: Annotated[list[ClockSpec], at_most(MAX_CLOCKS, "clocks")] = Field(min_length=1)


class SerializedFlow(Message):
    name: Name
    description: str | None = Field(default=None, max_length=TEXT_MAX)
    parameters: Annotated[list[ParameterSpec], at_most(MAX_PARAMETERS, "parameters")] = Field(default_factory=list)
    tasks: Annotated[list[TaskSpec], at_most(MAX_TASKS, "tasks")] = Field(default_factory=list)
    edges: Annotated[list[EdgeSpec], at_most(MAX_EDGES, "edges")] = Field(default_factory=list)
    storage: StorageSpec
    run_config: CheckedRunConfig = Field(default_factory=RunConfigSpec)
    schedule: ScheduleSpec | None = None
    core_version: str = Field(default="", max_length=64)
    # The flow as Prefect 1.x serialized it (``Flow.serialize()``), for the
    # Prefect clients that read ``serialized_flow`` back; None for flowbus's own.
    prefect: JsonObject | None = Field(default=None, exclude_if=is_none)

    @model_validator(mode="after")
    def _consistent(self) -> SerializedFlow:
        # Each check is one pass: a flow may have thousands of tasks and edges.
        slugs = [t.slug for t in self.tasks]
        dup_slugs = duplicates(slugs)
        if dup_slugs:
            raise ValueError(f"duplicate task slugs: {_some(dup_slugs)}")
        names = [p.name for p in self.parameters]
        dup_params = duplicates(names)
        if dup_params:
            raise ValueError(f"duplicate parameter names: {_some(dup_params)}")
        known = set(slugs)
        for edge in self.edges:
            if edge.upstream not in known or edge.downstream not in known:
                raise ValueError(f"edge {edge.upstream} -> {edge.downstream} names an unknown task")
        declared = set(names)
        for index, clock in enumerate(self.schedule.clocks if self.schedule else []):
            undeclared = sorted(set(clock.parameter_defaults) - declared)
            if undeclared:
                raise ValueError(f"clock {index} sets parameters the flow does not declare: {undeclared}")
        return self


def _some(values: list[str], shown: int = 20) -> str:
    """The first few of ``values`` for an error message (thousands would swamp it)."""
    more = len(values) - shown
    return f"{values[:shown]}" + (f" and {more} more" if more > 0 else "")


# ---- projects --------------------------------------------------------------


class CreateProject(Message):
    name: Name
    description: str | None = Field(default=None, max_length=TEXT_MAX)
    skip_if_exists: bool = False


class ProjectRef(Message):
    """Names a project by id or by name (exactly one)."""

    project_id: Key | None = None
    name: Name | None = None

    @model_validator(mode="after")
    def _one(self) -> ProjectRef:
        if (self.project_id is None) == (self.name is None):
            raise ValueError("give exactly one of project_id and name")
        return self


class ListProjects(Message):
    """Projects by name, a page at a time."""

    limit: Limit = LIST_LIMIT_DEFAULT
    offset: Offset = 0


class GetProject(ProjectRef):
    pass


class RenameProject(Message):
    project: ProjectRef
    new_name: Name


class SetProjectDescription(Message):
    project: ProjectRef
    description: str | None = Field(default=None, max_length=TEXT_MAX)


class DeleteProject(Message):
    project: ProjectRef


class Deleted(Message):
    id: str


class ProjectOut(Message):
    id: str
    name: str
    description: str | None
    created: datetime


class ProjectList(Message):
    projects: list[ProjectOut]


def _new_token() -> str:
    """A token that tells apart two events of a fact that may repeat (their message ids)."""
    return str(uuid.uuid4())


class _ProjectEvent(ProjectOut):
    """An event about a project, carrying the project as it now is."""

    fact: ClassVar[subjects.ProjectFact]
    _occurrence: str = PrivateAttr(default_factory=_new_token)

    def subject(self) -> str:
        return subjects.project_event(self.id, self.fact)

    def msg_id(self) -> str:
        return subjects.event_msg_id("project", self.id, self._occurrence)


class ProjectCreated(_ProjectEvent):
    """Published on ``flowbus.evt.project.<id>.created``: the new project."""

    fact: ClassVar[subjects.ProjectFact] = subjects.ProjectFact.CREATED

    def msg_id(self) -> str:
        return subjects.event_msg_id("project", self.id, self.fact)  # once per project


class ProjectRenamed(_ProjectEvent):
    """Published on ``flowbus.evt.project.<id>.renamed``: the project under its new name."""

    fact: ClassVar[subjects.ProjectFact] = subjects.ProjectFact.RENAMED


class ProjectDescribed(_ProjectEvent):
    """Published on ``flowbus.evt.project.<id>.described``: the project with its new description."""

    fact: ClassVar[subjects.ProjectFact] = subjects.ProjectFact.DESCRIBED


class ProjectDeleted(Deleted):
    """Published on ``flowbus.evt.project.<id>.deleted``."""

    def subject(self) -> str:
        return subjects.project_event(self.id, subjects.ProjectFact.DELETED)

    def msg_id(self) -> str:
        return subjects.event_msg_id("project", self.id, subjects.ProjectFact.DELETED)


# ---- flows -----------------------------------------------------------------


class RegisterFlow(Message):
    project_name: Name
    serialized_flow: SerializedFlow
    version_group_id: Key | None = None
    idempotency_key: Key | None = None
    labels: Labels | None = None
    set_schedule_active: bool = True


class GetFlow(Message):
    flow_id: Key


class AddFlowTasks(Message):
    """Tasks and edges added to a registered flow version, as Prefect 1.x
    registers them after the flow (``register_tasks``, ``register_edges``):
    known slugs and edges are skipped, so a resend changes nothing."""

    flow_id: Key
    tasks: Annotated[list[TaskSpec], at_most(MAX_TASKS, "tasks")] = Field(default_factory=list)
    edges: Annotated[list[EdgeSpec], at_most(MAX_EDGES, "edges")] = Field(default_factory=list)


class ListFlows(Message):
    """Flows by project, name and newest version first, a page at a time."""

    project_name: Name | None = None
    name: Name | None = None
    archived: bool | None = None
    newest_only: bool = True
    limit: Limit = LIST_LIMIT_DEFAULT
    offset: Offset = 0


class FlowSettings(Message):
    heartbeat_enabled: bool
    lazarus_enabled: bool
    version_locking_enabled: bool


class FlowGroupOut(Message):
    id: str
    project_id: str
    name: str
    labels: list[str] | None
    default_parameters: dict[str, Any]
    settings: FlowSettings
    # The group's own schedule; None: each flow's own applies.
    schedule: ScheduleSpec | None = None


class FlowGroupChanged(FlowGroupOut):
    """Published on ``flowbus.evt.flow_group.<id>.group_changed``: the group as it now is."""

    # True when this change set, replaced or cleared the group's schedule
    # (the scheduler re-plans the group's runs then).
    schedule_changed: bool = False

    _occurrence: str = PrivateAttr(default_factory=_new_token)

    def subject(self) -> str:
        return subjects.flow_group_event(self.id, subjects.FlowFact.GROUP_CHANGED)

    def msg_id(self) -> str:
        return subjects.event_msg_id("flow_group", self.id, self._occurrence)


class FlowVersion(Message):
    id: str
    version: int
    archived: bool
    created: datetime


class ArchiveFlow(Message):
    flow_id: Key


class UnarchiveFlow(Message):
    flow_id: Key


class SetFlowSettings(Message):
    """Change the settings of a flow's group; fields left out stay as they are."""

    flow_id: Key
    heartbeat_enabled: bool | None = None
    lazarus_enabled: bool | None = None
    version_locking_enabled: bool | None = None

    @model_validator(mode="after")
    def _some(self) -> SetFlowSettings:
        if self.heartbeat_enabled is None and self.lazarus_enabled is None and self.version_locking_enabled is None:
            raise ValueError("give at least one setting")
        return self


class SetFlowScheduleState(Message):
    flow_id: Key
    active: bool


class SetFlowGroupLabels(Message):
    """``labels=None`` unsets the group's labels (runs fall back to the flow's)."""

    flow_group_id: Key
    labels: Labels | None


class SetFlowGroupDefaultParameters(Message):
    flow_group_id: Key
    parameters: Annotated[dict[Name, JsonValue], shallow, at_most(MAX_PARAMETERS, "parameters")]


class SetFlowGroupSchedule(Message):
    """Set the group's schedule (it overrides each version's own); ``schedule=None``
    clears it, so each flow's own schedule applies again."""

    flow_group_id: Key
    schedule: ScheduleSpec | None


class FlowOut(Message):
    id: str
    project_id: str
    project_name: str
    flow_group_id: str
    name: str
    version: int
    description: str | None
    archived: bool
    labels: list[str]
    parameters: list[ParameterSpec]
    tasks: list[TaskSpec]
    edges: list[EdgeSpec]
    storage: StorageSpec
    run_config: RunConfigSpec
    schedule: ScheduleSpec | None
    is_schedule_active: bool
    core_version: str
    settings: FlowSettings
    default_parameters: dict[str, Any]
    created: datetime
    # True when an idempotent registration matched and created nothing.
    skipped: bool = False
    # Every version of the flow's group, newest first (single-flow queries only).
    versions: list[FlowVersion] | None = None


class FlowList(Message):
    flows: list[FlowOut]


class FlowEvent(Message):
    """Published on ``flowbus.evt.flow.<id>.<fact>``."""

    flow_id: str
    flow_group_id: str
    project_id: str
    fact: str
    version: int
    archived: bool
    data: dict[str, Any] = Field(default_factory=dict)
    _occurrence: str = PrivateAttr(default_factory=_new_token)

    def subject(self) -> str:
        return subjects.flow_event(self.flow_id, self.fact)

    def msg_id(self) -> str:
        superseded_by = self.data.get("superseded_by")
        if self.fact == subjects.FlowFact.ARCHIVED and superseded_by:
            return subjects.event_msg_id("flow", self.flow_id, f"{self.fact}:{superseded_by}")  # once per version
        return subjects.event_msg_id("flow", self.flow_id, f"{self.fact}:{self._occurrence}")
