"""Messages of the registration service: projects, serialized flows, flows."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, JsonValue, PrivateAttr, StringConstraints, model_validator

from flowbus import clocks, subjects
from flowbus.run_env import check_run_env
from flowbus.schemas.common import LABEL_MAX, MAX_LABELS, NAME_MAX, Message

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=NAME_MAX)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=LABEL_MAX)]
Labels = Annotated[list[Label], Field(max_length=MAX_LABELS)]
Key = Annotated[str, StringConstraints(min_length=1, max_length=NAME_MAX)]


# ---- the serialized flow (what `flow.serialize()` produces) ---------------


class ParameterSpec(Message):
    name: Name
    required: bool = False
    default: JsonValue = None


class TaskSpec(Message):
    slug: Name
    name: Name
    max_retries: int = Field(default=0, ge=0)
    retry_delay_seconds: float | None = Field(default=None, ge=0)
    tags: list[Label] = Field(default_factory=list)


class EdgeSpec(Message):
    upstream: Name
    downstream: Name
    key: str | None = None


class StorageSpec(Message):
    """Where the flow's code lives. The code itself never reaches the backend."""

    type: Literal["script", "module"]
    path: str | None = Field(default=None, max_length=4096)
    module: str | None = Field(default=None, max_length=NAME_MAX)

    @model_validator(mode="after")
    def _location(self) -> StorageSpec:
        if self.type == "script" and not self.path:
            raise ValueError("script storage needs a path")
        if self.type == "module" and not self.module:
            raise ValueError("module storage needs a module")
        return self


class RunConfigSpec(Message):
    labels: Labels | None = None
    env: dict[str, str] | None = None


def _env_allowed(config: RunConfigSpec) -> RunConfigSpec:
    check_run_env(config.env)
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
    dates: list[datetime] | None = None
    parameter_defaults: dict[str, JsonValue] = Field(default_factory=dict)
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
    clocks: list[ClockSpec] = Field(min_length=1)


class SerializedFlow(Message):
    name: Name
    description: str | None = Field(default=None, max_length=10_000)
    parameters: list[ParameterSpec] = Field(default_factory=list)
    tasks: list[TaskSpec] = Field(default_factory=list)
    edges: list[EdgeSpec] = Field(default_factory=list)
    storage: StorageSpec
    run_config: CheckedRunConfig = Field(default_factory=RunConfigSpec)
    schedule: ScheduleSpec | None = None
    core_version: str = Field(default="", max_length=64)

    @model_validator(mode="after")
    def _consistent(self) -> SerializedFlow:
        slugs = [t.slug for t in self.tasks]
        duplicates = sorted({s for s in slugs if slugs.count(s) > 1})
        if duplicates:
            raise ValueError(f"duplicate task slugs: {duplicates}")
        names = [p.name for p in self.parameters]
        dup_params = sorted({n for n in names if names.count(n) > 1})
        if dup_params:
            raise ValueError(f"duplicate parameter names: {dup_params}")
        known = set(slugs)
        for edge in self.edges:
            if edge.upstream not in known or edge.downstream not in known:
                raise ValueError(f"edge {edge.upstream} -> {edge.downstream} names an unknown task")
        for index, clock in enumerate(self.schedule.clocks if self.schedule else []):
            undeclared = sorted(set(clock.parameter_defaults) - set(names))
            if undeclared:
                raise ValueError(f"clock {index} sets parameters the flow does not declare: {undeclared}")
        return self


# ---- projects --------------------------------------------------------------


class CreateProject(Message):
    name: Name
    description: str | None = Field(default=None, max_length=10_000)
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


class GetProject(ProjectRef):
    pass


class RenameProject(Message):
    project: ProjectRef
    new_name: Name


class SetProjectDescription(Message):
    project: ProjectRef
    description: str | None = Field(default=None, max_length=10_000)


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


class ListFlows(Message):
    project_name: Name | None = None
    name: Name | None = None
    archived: bool | None = None
    newest_only: bool = True


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
    parameters: dict[Name, JsonValue]


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
