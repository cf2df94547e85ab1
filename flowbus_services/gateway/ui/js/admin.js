// The login form, the agents page and the API keys page (admin).

import { h, labels, replace, section, table, toast, when } from "./dom.js";
import { ApiError, gql, may, setApiKey, viewer } from "./api.js";

export function loginPage({ view, navigate }) {
  document.title = "Log in · flowbus";
  const next = new URLSearchParams(location.search).get("next") || "/";
  const alert = h("p", { role: "alert", class: "error" });
  const input = h("input", { id: "api-key", name: "api-key", type: "password", autocomplete: "off", required: true, spellcheck: "false" });
  const form = h("form", { class: "card narrow", onsubmit: async (event) => {
    event.preventDefault();
    alert.replaceChildren();
    setApiKey(input.value.trim());
    try {
      await viewer();
    } catch (err) {
      setApiKey(null);
      replace(alert, err instanceof ApiError && err.code === "UNAUTHENTICATED" ? "That key is not valid (or was revoked)." : err.message);
      input.focus();
      return;
    }
    // Only a path of this app: never an address given in the link.
    navigate(next.startsWith("/") && !next.startsWith("//") ? next : "/", { replaceState: true });
  } },
  h("h1", {}, "Log in"),
  h("p", {}, "Paste an API key. It stays in this browser tab's session and is sent with every request."),
  h("label", { for: "api-key" }, "API key"),
  input,
  h("button", { type: "submit" }, "Log in"),
  alert,
  h("p", { class: "muted small" }, "After ", h("code", {}, "flowbus up"), " the first admin key is in ",
    h("code", {}, "$FLOWBUS_HOME/api-key"), "; an admin creates others with ", h("code", {}, "flowbus create api-key"), "."));
  replace(view, form);
  input.focus();
}

export async function agentsPage({ view, who }) {
  document.title = "Agents · flowbus";
  const data = await gql(`{
    agent(order_by: {name: asc}) {
      id name type labels last_queried created core_version
      executing: flow_runs_aggregate(where: {state: {_in: ["Submitted", "Running", "Cancelling"]}}) { aggregate { count } }
    }
  }`);
  const onlineAfter = Date.now() - who.agentOnlineSeconds * 1000;
  const rows = data.agent.map((a) => {
    const online = a.last_queried && new Date(a.last_queried).getTime() >= onlineAfter;
    return h("tr", {},
      h("th", { scope: "row" }, a.name),
      h("td", {}, a.type),
      h("td", {}, labels(a.labels)),
      h("td", {}, when(a.last_queried)),
      h("td", {}, h("span", { class: online ? "badge state-success" : "badge state-cancelled" }, online ? "online" : "offline")),
      h("td", { class: "num" }, a.executing.aggregate.count));
  });
  replace(view,
    h("h1", {}, "Agents"),
    h("p", { class: "muted" }, `An agent heard from within ${who.agentOnlineSeconds} s is online.`),
    table(["Name", "Type", "Labels", "Last seen", "Status", "Runs executing"], rows));
}

const ROLES = ["admin", "user", "runner", "read-only"];

export async function apiKeysPage(ctx) {
  const { view, who } = ctx;
  document.title = "API keys · flowbus";
  if (!may(who, "admin")) {
    replace(view, h("h1", {}, "API keys"), h("p", { role: "alert" }, `Only an admin key may list and manage API keys; this key's role is ${who.role}.`));
    return;
  }
  const listing = h("div");
  const shown = h("div", { "aria-live": "polite" });

  async function refresh() {
    const data = await gql("{ api_key { id name role created last_used } }");
    if (!ctx.current()) return;
    replace(listing, table(["Name", "Role", "Created", "Last used", ""], data.api_key.map((k) => h("tr", {},
      h("th", { scope: "row" }, k.name),
      h("td", {}, k.role),
      h("td", {}, when(k.created)),
      h("td", {}, when(k.last_used)),
      h("td", {}, h("button", { type: "button", class: "danger", "aria-label": `Revoke ${k.name}`, onclick: async () => {
        if (!window.confirm(`Revoke the key "${k.name}"? Every request with it is refused from now on.`)) return;
        try {
          await gql("mutation($input: delete_api_key_input!) { delete_api_key(input: $input) { success } }", { input: { name: k.name } });
          toast(`Revoked ${k.name}.`);
        } catch (err) { toast(err.message, "error"); }
        await refresh();
      } }, "Revoke"))))));
  }

  const name = h("input", { id: "key-name", required: true, maxlength: 100, autocomplete: "off" });
  const role = h("select", { id: "key-role" }, ROLES.map((r) => h("option", { value: r, selected: r === "user" }, r)));
  const form = h("form", { class: "card", onsubmit: async (event) => {
    event.preventDefault();
    try {
      const data = await gql("mutation($input: create_api_key_input!) { create_api_key(input: $input) { id key } }",
        { input: { name: name.value.trim(), role: role.value } });
      replace(shown, h("div", { class: "card notice" },
        h("p", {}, h("strong", {}, `The key "${name.value.trim()}": copy it now, it is not shown again.`)),
        h("output", { class: "secret", "aria-label": "New API key" }, data.create_api_key.key)));
      form.reset();
      await refresh();
    } catch (err) {
      toast(err.message, "error");
    }
  } },
  h("h2", {}, "Create a key"),
  h("div", { class: "fields" },
    h("div", {}, h("label", { for: "key-name" }, "Name"), name),
    h("div", {}, h("label", { for: "key-role" }, "Role"), role)),
  h("button", { type: "submit" }, "Create key"));

  replace(view, h("h1", {}, "API keys"), section("Keys", listing), form, shown);
  await refresh();
}
