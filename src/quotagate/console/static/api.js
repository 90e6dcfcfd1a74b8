// The console's only door to the gateway: JSON over same-origin fetch, the session's CSRF token on
// every write, and one error type whatever went wrong.

/** An admin API answer other than 2xx, with the message of its OpenAI-shaped error body. */
export class ApiError extends Error {
  constructor(status, message, code = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

let sessionPromise = null;

/** The signed-in session ({role, name, team, csrf}); asked once per page load. */
export function getSession() {
  if (sessionPromise === null) {
    sessionPromise = request("GET", "/ui/session").catch((error) => {
      sessionPromise = null;
      throw error;
    });
  }
  return sessionPromise;
}

function toLogin() {
  // A session that ended (expired, signed out in another tab) sends the user back to sign in;
  // replace() so that Back does not return to a page that cannot load.
  if (!location.pathname.startsWith("/ui/login")) location.replace("/ui/login");
}

async function errorFrom(response) {
  let message = `${response.status} ${response.statusText}`.trim();
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || null;
    }
  } catch {
    // Not JSON (a proxy's error page): the status line is all there is to say.
  }
  return new ApiError(response.status, message, code);
}

async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD" && path !== "/ui/session") {
    const session = await getSession();
    headers["X-CSRF-Token"] = session.csrf;
  }
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ApiError(0, `The gateway could not be reached (${error.message}).`, "network_error");
  }
  if (response.status === 401) {
    toLogin();
    throw await errorFrom(response);
  }
  if (!response.ok) throw await errorFrom(response);
  if (response.status === 204) return null;
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** A path with a query string of the given parameters, leaving out empty ones. */
export function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") query.set(name, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

export const api = {
  get: (path, params) => request("GET", params ? withQuery(path, params) : path),
  send: (method, path, body) => request(method, path, body),
};

/** Ends the session and goes to the sign-in page. */
export async function signOut() {
  try {
    await request("POST", "/ui/logout");
  } finally {
    sessionPromise = null;
    location.replace("/ui/login");
  }
}
