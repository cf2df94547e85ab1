// The app's shell: which page a path shows, the header (who is logged in),
// links followed without reloading the page, and the login gate.

import { h, replace } from "./dom.js";
import { ApiError, apiKey, setApiKey, viewer } from "./api.js";
import { dashboardPage } from "./dashboard.js";
import { flowPage } from "./flow.js";
import { runPage } from "./run.js";
import { agentsPage, apiKeysPage, loginPage } from "./admin.js";

const ROUTES = [
  [/^\/$/, dashboardPage],
  [/^\/agents$/, agentsPage],
  [/^\/api-keys$/, apiKeysPage],
  // /<tenant slug>/flow/<id>: the links the Prefect 1.x client prints.
  [/^\/(?:[^/]+\/)?flow\/([^/]+)$/, flowPage],
  [/^\/(?:[^/]+\/)?flow-run\/([^/]+)$/, runPage],
];

let generation = 0;
let cleanups = [];

export function navigate(path, { replaceState = false } = {}) {
  if (replaceState) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  render();
}

function runCleanups() {
  for (const fn of cleanups) {
    try { fn(); } catch { /* a feed already closed */ }
  }
  cleanups = [];
}

function header(who) {
  const whoEl = document.getElementById("who");
  for (const el of document.querySelectorAll("[data-needs]")) el.hidden = !who?.permissions.includes(el.dataset.needs);
  for (const el of document.querySelectorAll("nav a")) {
    if (el.getAttribute("href") === location.pathname) el.setAttribute("aria-current", "page");
    else el.removeAttribute("aria-current");
  }
  if (!who) { whoEl.replaceChildren(); return; }
  replace(whoEl,
    h("span", { class: "muted" }, `${who.name} · ${who.role}`),
    apiKey() ? h("button", { type: "button", class: "link", onclick: () => { setApiKey(null); navigate("/login"); } }, "Log out") : null);
}

function errorView(err) {
  const notFound = err instanceof ApiError && err.code === "NOT_FOUND";
  return h("div", { class: "error-page" },
    h("h1", {}, notFound ? "Not found" : "Something went wrong"),
    h("p", { role: "alert" }, err.message, err.code ? ` (${err.code})` : ""),
    h("p", {}, h("a", { href: "/" }, "Back to the dashboard")));
}

async function render() {
  runCleanups();
  const mine = ++generation;
  const main = document.getElementById("main");
  const view = h("div", { class: "view" }, h("p", { class: "muted" }, "Loading…"));
  replace(main, view);
  const path = location.pathname;
  if (path === "/login") {
    header(null);
    loginPage({ view, navigate });
    return;
  }
  let who;
  try {
    who = await viewer();
  } catch (err) {
    if (err instanceof ApiError && err.code === "UNAUTHENTICATED") {
      setApiKey(null);
      navigate(`/login?next=${encodeURIComponent(path + location.search)}`, { replaceState: true });
    } else if (mine === generation) {
      replace(view, errorView(err));
    }
    return;
  }
  if (mine !== generation) return;
  header(who);
  const route = ROUTES.find(([re]) => re.test(path));
  if (!route) {
    replace(view, errorView(new ApiError(`No page at ${path}.`, "NOT_FOUND")));
    return;
  }
  const ctx = {
    view,
    who,
    params: path.match(route[0]).slice(1).map(decodeURIComponent),
    query: new URLSearchParams(location.search),
    navigate,
    // Stop a feed when the user leaves the page (at once if they already have).
    onLeave(fn) { if (mine === generation) cleanups.push(fn); else fn(); },
    current() { return mine === generation; },
  };
  try {
    await route[1](ctx);
  } catch (err) {
    if (mine !== generation) return;
    if (err instanceof ApiError && err.code === "UNAUTHENTICATED") {
      setApiKey(null);
      navigate(`/login?next=${encodeURIComponent(path)}`, { replaceState: true });
      return;
    }
    replace(view, errorView(err));
  }
  if (mine === generation) document.getElementById("main").focus({ preventScroll: true });
}

// Links inside the app change the page without reloading it.
document.addEventListener("click", (event) => {
  if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const a = event.target.closest("a[href]");
  if (!a || a.target || a.origin !== location.origin) return;
  if (a.pathname.startsWith("/ui/") || a.pathname === "/graphql") return;
  event.preventDefault();
  if (a.pathname + a.search !== location.pathname + location.search) navigate(a.pathname + a.search);
});
window.addEventListener("popstate", render);
render();
