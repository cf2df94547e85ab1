// The gateway's GraphQL API, as the pages use it: queries and mutations over
// POST /graphql with the user's API key as the bearer token, subscriptions
// over the WebSocket on /graphql (graphql-transport-ws, by the vendored
// graphql-ws client). The key lives in the browser session only.

const KEY = "flowbus.apiKey";

export class ApiError extends Error {
  constructor(message, code, status) {
    super(message);
    this.code = code || "INTERNAL";
    this.status = status;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY);
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
  viewerCache = null;
  closeSocket();
}

function headers() {
  const out = { "content-type": "application/json" };
  const key = apiKey();
  if (key) out.authorization = `Bearer ${key}`;
  return out;
}

// The data of one operation; its first error, with flowbus's code, thrown.
export async function gql(query, variables = {}) {
  let response;
  try {
    response = await fetch("/graphql", { method: "POST", headers: headers(), body: JSON.stringify({ query, variables }) });
  } catch (err) {
    throw new ApiError(`The gateway did not answer: ${err.message}`, "UNAVAILABLE");
  }
  let body;
  try {
    body = await response.json();
  } catch {
    throw new ApiError(`The gateway answered ${response.status} without JSON.`, "INTERNAL", response.status);
  }
  if (body.errors && body.errors.length) {
    const first = body.errors[0];
    throw new ApiError(first.message, first.extensions?.code, response.status);
  }
  return body.data;
}

let viewerCache = null;

// Who the key is ({name, role, permissions, agentOnlineSeconds}), asked once per key.
export async function viewer() {
  if (!viewerCache) {
    viewerCache = gql("{ viewer { name role permissions } api { version agent_online_seconds } }").then((d) => ({
      ...d.viewer,
      version: d.api.version,
      agentOnlineSeconds: d.api.agent_online_seconds || 30,
    }));
    viewerCache.catch(() => { viewerCache = null; });
  }
  return viewerCache;
}

export function may(who, permission) {
  return Boolean(who && who.permissions.includes(permission));
}

let socket = null;

function client() {
  if (!socket) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = window.graphqlWs.createClient({
      url: `${scheme}://${location.host}/graphql`,
      connectionParams: () => (apiKey() ? { Authorization: `Bearer ${apiKey()}` } : {}),
      lazy: true,
      retryAttempts: 5,
      keepAlive: 20000,
    });
  }
  return socket;
}

function closeSocket() {
  if (socket) socket.dispose();
  socket = null;
}

// Follow a subscription: onNext(data) for each item; returns the function that stops it.
export function subscribe(query, variables, { next, error, complete }) {
  return client().subscribe(
    { query, variables },
    {
      next: (result) => {
        if (result.errors && result.errors.length) {
          const first = result.errors[0];
          error?.(new ApiError(first.message, first.extensions?.code));
        } else if (result.data) {
          next(result.data);
        }
      },
      error: (err) => {
        const first = Array.isArray(err) ? err[0] : err;
        error?.(new ApiError(first?.message || first?.reason || "The live feed closed.", first?.extensions?.code));
      },
      complete: () => complete?.(),
    },
  );
}
