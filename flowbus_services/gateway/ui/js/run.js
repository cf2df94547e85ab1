// A flow run's page, live: its state (and history), the flow's schematic with
// each task coloured by its task run's state, the task runs, the logs as they
// arrive, and Cancel / Set state. Nothing is polled: three subscriptions (the
// run's states, its task runs' states, its logs) carry every change.

import { badge, duration, h, json, labels, link, replace, section, stateFamily, table, toast, when } from "./dom.js";
import { ApiError, gql, may, subscribe } from "./api.js";

const FINISHED = new Set(["Success", "Cached", "Skipped", "Mapped", "Finished", "Failed", "TimedOut",
  "TriggerFailed", "ValidationFailed", "Cancelled", "Looped"]);
const SETTABLE = ["Scheduled", "Running", "Success", "Failed", "Cancelled"];
const LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"];

const RUN_QUERY = `query Run($id: uuid!) {
  flow_run_by_pk(id: $id) {
    id name version state state_message state_timestamp scheduled_start_time start_time end_time created
    parameters context labels idempotency_key times_resurrected
    flow { id name version serialized_flow tasks { id name slug max_retries } project { id name } }
    agent { id name type labels }
    states(order_by: {version: asc}) { state message timestamp version }
    task_runs(order_by: {created: asc}) {
      id task_id task_slug name map_index state state_message version start_time end_time max_retries
      retries: states_aggregate(where: {state: {_eq: "Retrying"}}) { aggregate { count } }
    }
  }
}`;

const STATES_FEED = `subscription($id: uuid!) {
  flow_run_state_changes(flow_run_id: $id) { state message version timestamp deleted replayed }
}`;
const TASKS_FEED = `subscription($id: uuid!) {
  task_run_state_changes(flow_run_id: $id) { task_run_id task_id map_index state message version timestamp replayed }
}`;
const LOGS_FEED = `subscription($id: uuid!) {
  flow_run_logs(flow_run_id: $id) { timestamp level name message task_run_id }
}`;

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children.flat()) if (c != null) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

export async function runPage(ctx) {
  const { view, who, params } = ctx;
  const runId = params[params.length - 1];
  const run = (await gql(RUN_QUERY, { id: runId })).flow_run_by_pk;
  if (!run) throw new ApiError(`No flow run has the id ${runId}.`, "NOT_FOUND");
  document.title = `${run.name} · flowbus`;
  const page = new RunView(ctx, run, may(who, "write"), may(who, "run"));
  replace(view, page.render());
  page.follow();
}

class RunView {
  constructor(ctx, run, canWrite, canRun) {
    this.ctx = ctx;
    this.run = run;
    this.canWrite = canWrite;
    this.canRun = canRun;
    this.taskBySlug = new Map(run.flow.tasks.map((t) => [t.slug, t]));
    this.slugById = new Map(run.flow.tasks.map((t) => [t.id, t.slug]));
    this.taskRuns = new Map(run.task_runs.map((t) => [t.id, { ...t, retries: t.retries.aggregate.count }]));
    this.seenStates = new Set(run.states.map((s) => s.version));
    this.stateEl = h("span", { id: "run-state" });
    this.headEl = h("div", { class: "run-state" });
    this.actionsEl = h("div", { class: "actions" });
    this.setStateEl = h("div", { hidden: true, id: "set-state" });
    this.timelineEl = h("ol", { class: "timeline", "aria-label": "State history" });
    this.tasksEl = h("div");
    this.nodes = new Map();
    this.liveEl = h("p", { class: "live muted small", role: "status" }, "Connecting to live updates…");
    this.logsEl = h("ol", { class: "logs", role: "log", "aria-label": "Logs", tabindex: "0" });
    this.timesEl = h("dl", { class: "facts" });
  }

  render() {
    const run = this.run;
    for (const s of run.states) this.timelineEl.append(this.timelineItem(s));
    this.renderHead();
    this.renderTimes();
    this.renderTasks();
    return [
      h("div", { class: "page-head" },
        h("div", {},
          h("p", { class: "crumbs" }, link(`/?project=${run.flow.project.id}`, run.flow.project.name), " / ",
            link(`/flow/${run.flow.id}`, run.flow.name), " / run"),
          h("h1", {}, run.name),
          this.headEl),
        this.actionsEl),
      this.setStateEl,
      this.liveEl,
      h("div", { class: "grid" },
        section("Schematic", this.schematic()),
        section("State history", this.timelineEl)),
      section("Task runs", this.tasksEl),
      section("Logs", this.logControls(), this.logsEl),
      h("div", { class: "grid" },
        section("Details", this.timesEl),
        section("Parameters", json(run.parameters)),
        section("Context", json(run.context))),
    ];
  }

  renderHead() {
    const run = this.run;
    replace(this.stateEl, run.state);
    this.stateEl.className = `badge big state-${stateFamily(run.state)}`;
    replace(this.headEl, this.stateEl,
      h("span", { class: "muted" }, ` version ${run.version}`),
      run.state_message ? h("p", { class: "message" }, run.state_message) : null);
    const buttons = [];
    if (this.canWrite && !FINISHED.has(run.state) && run.state !== "Cancelling") {
      buttons.push(h("button", { type: "button", class: "danger", onclick: (e) => this.cancel(e.currentTarget) }, "Cancel"));
    }
    if (this.canRun) {
      buttons.push(h("button", { type: "button", class: "secondary", "aria-expanded": String(!this.setStateEl.hidden),
        "aria-controls": "set-state", onclick: () => this.toggleSetState() }, "Set state"));
    }
    replace(this.actionsEl, buttons);
  }

  renderTimes() {
    const run = this.run;
    replace(this.timesEl,
      h("dt", {}, "Flow"), h("dd", {}, link(`/flow/${run.flow.id}`, run.flow.name), ` (version ${run.flow.version})`),
      h("dt", {}, "Agent"), h("dd", {}, run.agent ? [run.agent.name, " ", labels(run.agent.labels)] : h("span", { class: "muted" }, "not taken yet")),
      h("dt", {}, "Labels"), h("dd", {}, labels(run.labels)),
      h("dt", {}, "Scheduled start"), h("dd", {}, when(run.scheduled_start_time)),
      h("dt", {}, "Started"), h("dd", {}, when(run.start_time)),
      h("dt", {}, "Ended"), h("dd", {}, when(run.end_time)),
      h("dt", {}, "Duration"), h("dd", {}, run.start_time ? duration(run.start_time, run.end_time) : "—"),
      run.idempotency_key ? [h("dt", {}, "Idempotency key"), h("dd", {}, h("code", {}, run.idempotency_key))] : null,
      run.times_resurrected ? [h("dt", {}, "Restarted by Lazarus"), h("dd", {}, `${run.times_resurrected} times`)] : null);
  }

  timelineItem(s) {
    return h("li", { class: `state-${stateFamily(s.state)}` },
      badge(s.state), " ", when(s.timestamp), h("span", { class: "muted" }, ` · v${s.version ?? "?"}`),
      s.message ? h("span", { class: "message" }, ` ${s.message}`) : null);
  }

  // ---- the schematic -----------------------------------------------------

  edges() {
    const flow = this.run.flow.serialized_flow || {};
    return (flow.edges || []).map((e) => [e.upstream ?? e.upstream_task?.slug, e.downstream ?? e.downstream_task?.slug])
      .filter(([a, b]) => this.taskBySlug.has(a) && this.taskBySlug.has(b));
  }

  schematic() {
    const tasks = this.run.flow.tasks;
    if (!tasks.length) return h("p", { class: "muted" }, "This flow declared no tasks.");
    if (!window.dagre) return h("p", { class: "error" }, "The graph layout library did not load.");
    const g = new window.dagre.graphlib.Graph();
    g.setGraph({ rankdir: "LR", nodesep: 18, ranksep: 40, marginx: 8, marginy: 8 });
    g.setDefaultEdgeLabel(() => ({}));
    for (const t of tasks) g.setNode(t.slug, { width: Math.min(220, 24 + 7.5 * t.name.length), height: 34 });
    for (const [a, b] of this.edges()) g.setEdge(a, b);
    window.dagre.layout(g);
    const { width, height } = g.graph();
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "group", "aria-label": "Tasks and their dependencies", class: "schematic" },
      svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
        svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow" }))));
    for (const e of g.edges()) {
      const points = g.edge(e).points.map((p) => `${p.x},${p.y}`).join(" ");
      root.append(svg("polyline", { points, class: "edge", "marker-end": "url(#arrow)" }));
    }
    for (const t of tasks) {
      const n = g.node(t.slug);
      const title = svg("title", {}, t.name);
      const node = svg("g", { class: "node state-none", transform: `translate(${n.x - n.width / 2},${n.y - n.height / 2})`, role: "img", "data-task": t.slug },
        title,
        svg("rect", { width: n.width, height: n.height, rx: 6 }),
        svg("text", { x: n.width / 2, y: n.height / 2 + 4, "text-anchor": "middle" }, t.name.length > 28 ? `${t.name.slice(0, 27)}…` : t.name));
      this.nodes.set(t.slug, { node, title, name: t.name });
    }
    for (const { node } of this.nodes.values()) root.append(node);
    this.paintNodes();
    return h("figure", { class: "schematic-wrap" }, root,
      h("figcaption", { class: "muted small" }, "Each task is coloured by its task run's state; hover for details."));
  }

  // A task's state: its parent run's (map_index -1) if there is one, else its latest run's.
  taskState(slug) {
    let best = null;
    for (const tr of this.taskRuns.values()) {
      if ((tr.task_slug || this.slugById.get(tr.task_id)) !== slug) continue;
      if (!best || tr.map_index === -1 || (best.map_index !== -1 && tr.version > best.version)) best = tr;
    }
    return best?.state || null;
  }

  paintNodes() {
    for (const [slug, { node, title, name }] of this.nodes) {
      const state = this.taskState(slug);
      node.setAttribute("class", `node state-${state ? stateFamily(state) : "none"}`);
      node.setAttribute("data-state", state || "");
      node.setAttribute("aria-label", `${name}: ${state || "not started"}`);
      title.textContent = `${name}: ${state || "not started"}`;
    }
  }

  renderTasks() {
    const rows = [...this.taskRuns.values()]
      .sort((a, b) => (a.start_time || "9").localeCompare(b.start_time || "9") || a.map_index - b.map_index)
      .map((t) => h("tr", {},
        h("th", { scope: "row" }, this.taskBySlug.get(t.task_slug)?.name || t.name || t.task_slug),
        h("td", { class: "num" }, t.map_index === -1 ? "" : t.map_index),
        h("td", {}, badge(t.state)),
        h("td", {}, when(t.start_time)),
        h("td", {}, t.start_time ? duration(t.start_time, t.end_time) : "—"),
        h("td", { class: "num" }, `${t.retries ?? 0} of ${t.max_retries ?? 0}`)));
    replace(this.tasksEl, table(["Task", "Map index", "State", "Started", "Duration", "Retries"], rows));
  }

  // ---- logs ----------------------------------------------------------------

  logControls() {
    this.level = h("select", { id: "log-level", onchange: () => this.filterLogs() },
      LEVELS.map((l) => h("option", { value: l, selected: l === "DEBUG" }, l === "DEBUG" ? "All levels" : `${l} and above`)));
    this.search = h("input", { type: "search", id: "log-search", autocomplete: "off", oninput: () => this.filterLogs() });
    this.followBox = h("input", { type: "checkbox", id: "log-follow", checked: true });
    return h("div", { class: "log-controls" },
      h("label", { for: "log-level" }, "Level"), this.level,
      h("label", { for: "log-search" }, "Search"), this.search,
      h("span", { class: "switch" }, this.followBox, h("label", { for: "log-follow" }, "Follow")));
  }

  logVisible(li) {
    const rank = LEVELS.indexOf(li.dataset.level);
    const needle = this.search.value.trim().toLowerCase();
    return (rank < 0 || rank >= LEVELS.indexOf(this.level.value)) && (!needle || li.dataset.text.includes(needle));
  }

  filterLogs() {
    for (const li of this.logsEl.children) li.hidden = !this.logVisible(li);
  }

  addLog(r) {
    const task = r.task_run_id ? this.taskRuns.get(r.task_run_id) : null;
    const li = h("li", { class: `log level-${r.level.toLowerCase()}`, dataset: { level: r.level, text: `${r.name} ${r.message}`.toLowerCase() } },
      when(r.timestamp), " ", h("span", { class: "level" }, r.level), " ",
      h("span", { class: "logger" }, task ? task.task_slug || r.name : r.name), " ",
      h("span", { class: "text" }, r.message));
    li.hidden = !this.logVisible(li);
    this.logsEl.append(li);
    if (this.followBox.checked) this.logsEl.scrollTop = this.logsEl.scrollHeight;
  }

  // ---- live ----------------------------------------------------------------

  follow() {
    const id = this.run.id;
    const ctx = this.ctx;
    const stopped = (what) => (err) => {
      if (ctx.current()) replace(this.liveEl, h("span", { class: "error" }, `Live ${what} stopped: ${err.message} Reload the page to follow again.`));
    };
    replace(this.liveEl, "Live: changes appear as they happen.");
    ctx.onLeave(subscribe(STATES_FEED, { id }, {
      next: (d) => this.onState(d.flow_run_state_changes),
      error: stopped("states"),
      complete: () => this.onRunEnded(),
    }));
    ctx.onLeave(subscribe(TASKS_FEED, { id }, { next: (d) => this.onTask(d.task_run_state_changes), error: stopped("task states") }));
    ctx.onLeave(subscribe(LOGS_FEED, { id }, { next: (d) => this.addLog(d.flow_run_logs), error: stopped("logs") }));
  }

  onState(change) {
    if (change.deleted) {
      replace(this.liveEl, h("span", { role: "alert" }, "This run was deleted."));
      return;
    }
    if (change.version != null && this.seenStates.has(change.version)) return;
    this.seenStates.add(change.version);
    this.timelineEl.append(this.timelineItem(change));
    if (change.version == null || change.version >= this.run.version) {
      Object.assign(this.run, { state: change.state, state_message: change.message, version: change.version ?? this.run.version });
      this.renderHead();
      if (change.state === "Running" && !this.run.start_time) this.refreshFacts();
    }
  }

  onTask(t) {
    const known = this.taskRuns.get(t.task_run_id);
    if (known && t.version <= known.version) return;
    const next = { ...(known || { id: t.task_run_id, task_id: t.task_id, task_slug: this.slugById.get(t.task_id), name: "", max_retries: 0, retries: 0 }) };
    next.map_index = t.map_index;
    next.state = t.state;
    next.state_message = t.message;
    next.version = t.version;
    if (t.state === "Retrying" && !t.replayed) next.retries = (next.retries || 0) + 1;
    if (t.state === "Running" && !next.start_time) next.start_time = t.timestamp;
    if (FINISHED.has(t.state)) next.end_time = t.timestamp;
    this.taskRuns.set(t.task_run_id, next);
    this.paintNodes();
    this.renderTasks();
  }

  // The feed ended with the run: read the times and agent it finished with.
  async onRunEnded() {
    await this.refreshFacts();
  }

  async refreshFacts() {
    try {
      const fresh = (await gql(RUN_QUERY, { id: this.run.id })).flow_run_by_pk;
      if (!fresh || !this.ctx.current()) return;
      for (const key of ["start_time", "end_time", "agent", "times_resurrected"]) this.run[key] = fresh[key];
      this.renderTimes();
    } catch { /* the live view stays as it is */ }
  }

  // ---- actions -----------------------------------------------------------

  async cancel(button) {
    button.disabled = true;
    try {
      const data = await gql("mutation($input: cancel_flow_run_input!) { cancel_flow_run(input: $input) { state } }", { input: { flow_run_id: this.run.id } });
      toast(`Cancel sent: the run is ${data.cancel_flow_run.state}.`);
    } catch (err) {
      toast(err.message, "error");
      button.disabled = false;
    }
  }

  toggleSetState() {
    const open = this.setStateEl.hidden;
    this.setStateEl.hidden = !open;
    if (open) {
      replace(this.setStateEl, this.setStateForm());
      this.setStateEl.querySelector("select").focus();
    }
    this.renderHead();
  }

  setStateForm() {
    // The version the user saw when they chose to act: sent as is, so a change by
    // someone else in the meantime is refused instead of overwritten.
    const version = this.run.version;
    const seen = this.run.state;
    const type = h("select", { id: "new-state" }, SETTABLE.map((s) => h("option", { value: s }, s)));
    const message = h("input", { id: "new-state-message", autocomplete: "off", maxlength: 1000 });
    const alert = h("div", { role: "alert", class: "error" });
    const submit = h("button", { type: "submit" }, "Save state");
    return h("form", { class: "card", "aria-label": "Set the run's state", onsubmit: async (event) => {
      event.preventDefault();
      alert.replaceChildren();
      submit.disabled = true;
      try {
        const state = { type: type.value, message: message.value.trim() || `Set by hand to ${type.value}` };
        await gql("mutation($input: set_flow_run_state_input!) { set_flow_run_state(input: $input) { id status } }",
          { input: { flow_run_id: this.run.id, version, state } });
        toast(`State set to ${type.value}.`);
        this.setStateEl.hidden = true;
        this.renderHead();
      } catch (err) {
        submit.disabled = false;
        if (err.code === "VERSION_LOCKING_ERROR") {
          replace(alert,
            h("strong", {}, "Someone else changed this run first. "),
            `You chose from version ${version} (${seen}); the run is now at version ${this.run.version} (${this.run.state}). `,
            "Nothing was changed. Look at the run's state now, then open Set state again if you still want to change it.");
        } else {
          replace(alert, err.message, err.code ? ` (${err.code})` : "");
        }
      }
    } },
    h("p", {}, `From version ${version} (${seen}):`),
    h("div", { class: "fields" },
      h("div", { class: "field" }, h("label", { for: "new-state" }, "New state"), type),
      h("div", { class: "field" }, h("label", { for: "new-state-message" }, "Message"), message)),
    submit, alert);
  }
}
