// A flow's page: what it is, its settings and schedule, its parameters, the
// versions of its group (archive / unarchive), its runs, and Run Flow.

import { badge, duration, h, labels, link, replace, section, table, toast, when } from "./dom.js";
import { ApiError, gql, may } from "./api.js";

const PAGE_SIZE = 20;
const SETTINGS = [
  ["heartbeat_enabled", "Heartbeat", "enable_flow_heartbeat", "disable_flow_heartbeat"],
  ["lazarus_enabled", "Lazarus", "enable_flow_lazarus_process", "disable_flow_lazarus_process"],
  ["version_locking_enabled", "Version locking", "enable_flow_version_locking", "disable_flow_version_locking"],
];

const FLOW_QUERY = `query Flow($id: uuid!) {
  flow_by_pk(id: $id) {
    id name version description archived created parameters is_schedule_active schedule core_version run_config
    project { id name }
    flow_group {
      id labels default_parameters schedule heartbeat_enabled lazarus_enabled version_locking_enabled
      flows(order_by: {version: desc}) { id version archived created }
    }
  }
}`;

const GROUP_QUERY = `query Group($id: String!) {
  flow_group_by_pk(id: $id) { flows(order_by: {version: desc}) { id archived } }
}`;

const RUNS_QUERY = `query Runs($group: String!, $limit: Int!, $offset: Int!) {
  flow_run(where: {flow_group_id: {_eq: $group}}, order_by: [{scheduled_start_time: desc}, {created: desc}], limit: $limit, offset: $offset) {
    id name state start_time end_time scheduled_start_time flow { version }
  }
  flow_run_aggregate(where: {flow_group_id: {_eq: $group}}) { aggregate { count } }
}`;

const SCHEDULE_QUERY = `query Schedule($id: uuid!) {
  flow_schedule(flow_id: $id, count: 10) { active upcoming { start } }
}`;

async function mutate(field, inputType, input) {
  const data = await gql(`mutation($input: ${inputType}!) { ${field}(input: $input) { success error } }`, { input });
  const payload = data[field];
  if (payload && payload.success === false) throw new ApiError(payload.error || `${field} did not succeed.`, "REFUSED");
  return payload;
}

export async function flowPage(ctx) {
  const { view, who, params } = ctx;
  const flowId = params[params.length - 1];
  const data = await gql(FLOW_QUERY, { id: flowId });
  const flow = data.flow_by_pk;
  if (!flow) {
    // Prefect 1.x prints its flow links with the flow group's id: open the group's newest version.
    const group = (await gql(GROUP_QUERY, { id: flowId })).flow_group_by_pk;
    const newest = group && (group.flows.find((f) => !f.archived) || group.flows[0]);
    if (newest && ctx.current()) {
      ctx.navigate(`/flow/${newest.id}`, { replaceState: true });
      return;
    }
    throw new ApiError(`No flow or flow group has the id ${flowId}.`, "NOT_FOUND");
  }
  document.title = `${flow.name} · flowbus`;
  const group = flow.flow_group;
  const canWrite = may(who, "write");
  const reload = () => ctx.current() && flowPage(ctx);

  const settingsList = h("ul", { class: "settings" }, SETTINGS.map(([key, label, on, off]) => {
    const enabled = Boolean(group[key]);
    if (!canWrite) return h("li", {}, `${label}: `, h("strong", {}, enabled ? "on" : "off"));
    const id = `setting-${key}`;
    const box = h("input", { type: "checkbox", id, role: "switch", checked: enabled, onchange: async () => {
      box.disabled = true;
      const field = box.checked ? on : off;
      try {
        await mutate(field, `${field}_input`, { flow_id: flow.id });
        toast(`${label} ${box.checked ? "on" : "off"}.`);
      } catch (err) {
        box.checked = !box.checked;
        toast(err.message, "error");
      }
      box.disabled = false;
    } });
    return h("li", {}, box, h("label", { for: id }, label));
  }));

  const scheduleBox = h("div", {}, h("p", { class: "muted" }, "Loading the schedule…"));
  const runsBox = h("div");
  const versions = group.flows.map((v) => h("tr", {},
    h("th", { scope: "row" }, v.id === flow.id ? `${v.version} (this page)` : link(`/flow/${v.id}`, `Version ${v.version}`)),
    h("td", {}, when(v.created)),
    h("td", {}, v.archived ? "archived" : "active"),
    h("td", {}, canWrite ? h("button", { type: "button", class: "secondary", "aria-label": `${v.archived ? "Unarchive" : "Archive"} version ${v.version}`,
      onclick: async () => {
        const field = v.archived ? "unarchive_flow" : "archive_flow";
        try {
          await mutate(field, `${field}_input`, { flow_id: v.id });
          toast(`Version ${v.version} ${v.archived ? "unarchived" : "archived"}.`);
        } catch (err) { toast(err.message, "error"); }
        await reload();
      } }, v.archived ? "Unarchive" : "Archive") : "")));

  const defaults = { ...Object.fromEntries((flow.parameters || []).map((p) => [p.name, p.default])), ...(group.default_parameters || {}) };
  const paramRows = (flow.parameters || []).map((p) => h("tr", {},
    h("th", { scope: "row" }, h("code", {}, p.name)),
    h("td", {}, p.required ? "required" : "optional"),
    h("td", {}, h("code", {}, JSON.stringify(defaults[p.name] ?? null)))));

  const runForm = h("div", { hidden: true });
  const runButton = canWrite && !flow.archived
    ? h("button", { type: "button", "aria-expanded": "false", "aria-controls": "run-flow", onclick: () => {
      const open = runForm.hidden;
      runForm.hidden = !open;
      runButton.setAttribute("aria-expanded", String(open));
      if (open) runForm.querySelector("textarea, input")?.focus();
    } }, "Run Flow")
    : null;
  if (canWrite && !flow.archived) replace(runForm, runFlowForm(ctx, flow, defaults));
  runForm.id = "run-flow";

  replace(view,
    h("div", { class: "page-head" },
      h("div", {}, h("p", { class: "crumbs" }, link(`/?project=${flow.project.id}`, flow.project.name), " / flow"),
        h("h1", {}, flow.name), h("p", { class: "muted" }, `Version ${flow.version}`, flow.archived ? " · archived" : "")),
      runButton),
    runForm,
    h("div", { class: "grid" },
      section("About",
        h("dl", { class: "facts" },
          h("dt", {}, "Project"), h("dd", {}, flow.project.name),
          h("dt", {}, "Version"), h("dd", {}, flow.version),
          h("dt", {}, "Labels"), h("dd", {}, labels(group.labels ?? flow.run_config?.labels)),
          h("dt", {}, "Registered"), h("dd", {}, when(flow.created)),
          flow.description ? [h("dt", {}, "Description"), h("dd", {}, flow.description)] : null)),
      section("Settings", settingsList),
      section("Schedule", scheduleBox),
      section("Parameters", table(["Name", "", "Default"], paramRows))),
    section("Versions", table(["Version", "Registered", "Status", ""], versions)),
    section("Runs", runsBox));

  loadSchedule(ctx, flow, scheduleBox, canWrite);
  await showRuns(ctx, group.id, runsBox, 0);
}

async function loadSchedule(ctx, flow, box, canWrite) {
  let schedule;
  try {
    schedule = (await gql(SCHEDULE_QUERY, { id: flow.id })).flow_schedule;
  } catch (err) {
    if (ctx.current()) replace(box, h("p", { class: "error" }, `The schedule could not be read: ${err.message}`));
    return;
  }
  if (!ctx.current()) return;
  const hasSchedule = Boolean(flow.schedule || flow.flow_group.schedule);
  if (!hasSchedule) {
    replace(box, h("p", { class: "muted" }, "This flow has no schedule."));
    return;
  }
  let toggle;
  if (canWrite) {
    const box_ = h("input", { type: "checkbox", id: "schedule-active", role: "switch", checked: flow.is_schedule_active, onchange: async () => {
      box_.disabled = true;
      const field = box_.checked ? "set_schedule_active" : "set_schedule_inactive";
      try {
        await mutate(field, `${field}_input`, { flow_id: flow.id });
        toast(`Schedule ${box_.checked ? "on" : "off"}.`);
        flow.is_schedule_active = box_.checked;
        await loadSchedule(ctx, flow, box, canWrite);
        return;
      } catch (err) {
        box_.checked = !box_.checked;
        toast(err.message, "error");
      }
      box_.disabled = false;
    } });
    toggle = h("p", { class: "switch" }, box_, h("label", { for: "schedule-active" }, "Schedule active"));
  } else {
    toggle = h("p", {}, "Schedule: ", h("strong", {}, flow.is_schedule_active ? "on" : "off"));
  }
  const times = schedule.upcoming.map((u) => h("li", {}, when(u.start)));
  replace(box, toggle,
    h("p", { class: "muted small" }, schedule.active ? "Next start times:" : "Next start times (if it were on):"),
    h("ol", { class: "times", "aria-label": "Next start times" }, times));
}

async function showRuns(ctx, groupId, box, offset) {
  const data = await gql(RUNS_QUERY, { group: groupId, limit: PAGE_SIZE, offset });
  if (!ctx.current()) return;
  const count = data.flow_run_aggregate.aggregate.count;
  const rows = data.flow_run.map((r) => h("tr", {},
    h("td", {}, badge(r.state)),
    h("th", { scope: "row" }, link(`/flow-run/${r.id}`, r.name)),
    h("td", { class: "num" }, r.flow?.version ?? ""),
    h("td", {}, when(r.start_time || r.scheduled_start_time)),
    h("td", {}, r.start_time ? duration(r.start_time, r.end_time) : "—")));
  const pager = h("nav", { class: "pager", "aria-label": "Runs pages" },
    h("button", { type: "button", class: "secondary", disabled: offset === 0, onclick: () => showRuns(ctx, groupId, box, Math.max(0, offset - PAGE_SIZE)) }, "Newer"),
    h("span", { class: "muted" }, count ? `${offset + 1}–${Math.min(offset + PAGE_SIZE, count)} of ${count}` : "0 runs"),
    h("button", { type: "button", class: "secondary", disabled: offset + PAGE_SIZE >= count, onclick: () => showRuns(ctx, groupId, box, offset + PAGE_SIZE) }, "Older"));
  replace(box, table(["State", "Run", "Version", "Start", "Duration"], rows), pager);
}

function field(id, label, control, hint) {
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null);
}

function runFlowForm(ctx, flow, defaults) {
  const params = (flow.parameters || []).map((p) => {
    const id = `param-${p.name}`;
    const value = p.name in defaults && defaults[p.name] !== undefined ? JSON.stringify(defaults[p.name]) : "";
    const error = h("p", { class: "error", id: `${id}-error` });
    const area = h("textarea", { id, name: p.name, rows: 1, spellcheck: "false", required: p.required && !value, "aria-describedby": `${id}-error`,
      oninput: () => { error.replaceChildren(); area.removeAttribute("aria-invalid"); } }, value);
    return { p, area, error };
  });
  const labelsInput = h("input", { id: "run-labels", autocomplete: "off", placeholder: "the flow's labels", "aria-describedby": "run-labels-hint" });
  const nameInput = h("input", { id: "run-name", autocomplete: "off", maxlength: 200, placeholder: "a generated name" });
  const now = h("input", { type: "radio", id: "start-now", name: "start", value: "now", checked: true });
  const later = h("input", { type: "radio", id: "start-later", name: "start", value: "later" });
  const at = h("input", { type: "datetime-local", id: "start-at", "aria-label": "Start at (your time zone)", step: 1 });
  const keyInput = h("input", { id: "run-key", autocomplete: "off", maxlength: 200, "aria-describedby": "run-key-hint" });
  const alert = h("p", { role: "alert", class: "error" });
  const submit = h("button", { type: "submit" }, "Run");

  const form = h("form", { class: "card", "aria-label": `Run ${flow.name}`, novalidate: true, onsubmit: async (event) => {
    event.preventDefault();
    alert.replaceChildren();
    const parameters = {};
    let bad = null;
    for (const { p, area, error } of params) {
      error.replaceChildren();
      area.removeAttribute("aria-invalid");
      const text = area.value.trim();
      if (!text) {
        if (p.required) { replace(error, `${p.name} is required.`); bad = bad || area; area.setAttribute("aria-invalid", "true"); }
        continue;
      }
      try {
        parameters[p.name] = JSON.parse(text);
      } catch {
        replace(error, `Not JSON: write a string in quotes, e.g. "${text.replace(/"/g, "")}".`);
        area.setAttribute("aria-invalid", "true");
        bad = bad || area;
      }
    }
    let scheduled = null;
    if (later.checked) {
      const date = new Date(at.value);
      if (!at.value || Number.isNaN(date.getTime())) { replace(alert, "Choose when the run starts."); at.focus(); return; }
      scheduled = date.toISOString();
    }
    if (bad) { bad.focus(); return; }
    const input = { flow_id: flow.id, parameters };
    const runLabels = labelsInput.value.split(",").map((s) => s.trim()).filter(Boolean);
    if (runLabels.length) input.labels = runLabels;
    if (nameInput.value.trim()) input.flow_run_name = nameInput.value.trim();
    if (keyInput.value.trim()) input.idempotency_key = keyInput.value.trim();
    if (scheduled) input.scheduled_start_time = scheduled;
    submit.disabled = true;
    try {
      const data = await gql("mutation($input: create_flow_run_input!) { create_flow_run(input: $input) { id } }", { input });
      toast("Run created.");
      ctx.navigate(`/flow-run/${data.create_flow_run.id}`);
    } catch (err) {
      replace(alert, err.message, err.code ? ` (${err.code})` : "");
      submit.disabled = false;
    }
  } },
  h("h2", {}, `Run ${flow.name}`),
  params.length ? h("fieldset", {}, h("legend", {}, "Parameters (JSON values)"),
    params.map(({ p, area, error }) => h("div", { class: "field" },
      h("label", { for: area.id }, p.name, p.required ? h("span", { class: "required" }, " (required)") : null), area, error)))
    : h("p", { class: "muted" }, "This flow takes no parameters."),
  h("div", { class: "fields" },
    field("run-labels", "Labels", labelsInput, "Comma-separated; empty: the flow's labels."),
    field("run-name", "Run name", nameInput),
    field("run-key", "Idempotency key", keyInput, "The same key again returns the same run.")),
  h("fieldset", { class: "inline" }, h("legend", {}, "Start"),
    now, h("label", { for: "start-now" }, "Now"), later, h("label", { for: "start-later" }, "Later"), at),
  submit, alert);
  return form;
}
