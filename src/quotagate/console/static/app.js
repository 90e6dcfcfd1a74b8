// The console's shell: who is signed in, the navigation, and a hash router that loads one page
// module at a time into <main>. See README.md in this folder for the page module contract.

import { api, getSession, signOut } from "./api.js";
import { el, errorBox, toast } from "./ui.js";

const PAGES = ["overview", "keys", "teams", "deployments", "ledger", "audit"];
const DEFAULT_PAGE = "overview";

const main = document.getElementById("main");
const navToggle = document.getElementById("nav-toggle");
const nav = document.getElementById("nav");

let session = null;
let current = null; // {id, module, controller, query}
let firstRender = true;

/** "#/ledger?model=x" -> {id: "ledger", params: URLSearchParams("model=x")}. */
function parseHash(hash) {
  const text = (hash || "").replace(/^#\/?/, "");
  const [path, query = ""] = text.split("?");
  const id = PAGES.includes(path) ? path : null;
  return { id, query, params: new URLSearchParams(query) };
}

function navigate(hash) {
  const target = hash.startsWith("#") ? hash : `#${hash}`;
  if (location.hash === target) route();
  else location.hash = target;
}

/** Puts the page's own state (filters) into the address without loading the page again. */
function setParams(params) {
  const query = new URLSearchParams(
    Object.entries(params).filter(([, value]) => value !== undefined && value !== null && value !== ""),
  ).toString();
  // The address may already name another page (a click or a link followed while this page was
  // loading): that page's hashchange is on its way, and must not find this page's address instead.
  if (!current || parseHash(location.hash).id !== current.id) return;
  history.replaceState(null, "", `#/${current.id}${query ? `?${query}` : ""}`);
  current.query = query;
}

function markNav(id) {
  for (const link of nav.querySelectorAll("a[data-page]")) {
    if (link.dataset.page === id) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function closeNav() {
  navToggle.setAttribute("aria-expanded", "false");
  nav.classList.remove("open");
}

async function route() {
  // "#main" and the like are in-page anchors (the skip link), not pages.
  if (location.hash && !location.hash.startsWith("#/")) return undefined;
  const { id, query, params } = parseHash(location.hash);
  if (id === null) {
    history.replaceState(null, "", `#/${DEFAULT_PAGE}`);
    return route();
  }
  if (current && current.id === id && current.query === query) return undefined;
  leave();
  closeNav();
  markNav(id);
  const controller = new AbortController();
  const heading = el("h1", { id: "page-title", tabindex: "-1" }, nav.querySelector(`a[data-page="${id}"]`).textContent);
  const container = el("div", { class: "page-body" });
  const section = el("section", { class: `page page-${id}`, "aria-labelledby": "page-title", dataset: { page: id } }, heading, container);
  main.replaceChildren(section);
  current = { id, module: null, controller, query };
  const entry = current;
  if (!firstRender) heading.focus();
  firstRender = false;
  let module;
  try {
    module = (await import(`./pages/${id}.js`)).default;
  } catch (error) {
    container.append(errorBox(new Error(`the ${id} page could not be loaded (${error.message})`)));
    return undefined;
  }
  if (current !== entry) return undefined; // left while the module was loading
  entry.module = module;
  heading.textContent = module.title || heading.textContent;
  document.title = `${heading.textContent} · quotagate console`;
  const ctx = {
    api,
    session,
    canWrite: session.role !== "viewer",
    params,
    // A page still finishing after its operator moved on must not write its filters into the
    // next page's address.
    setParams: (values) => {
      if (current === entry) setParams(values);
    },
    signal: controller.signal,
    navigate,
    toast,
  };
  main.setAttribute("aria-busy", "true");
  try {
    await module.render(container, ctx);
  } catch (error) {
    if (!controller.signal.aborted) {
      container.append(errorBox(error));
      console.error(error);
    }
  } finally {
    if (current === entry) main.removeAttribute("aria-busy");
  }
  return undefined;
}

function leave() {
  if (!current) return;
  current.controller.abort();
  if (current.module && typeof current.module.dispose === "function") {
    try {
      current.module.dispose();
    } catch (error) {
      console.error(error);
    }
  }
  current = null;
}

async function start() {
  try {
    session = await getSession();
  } catch {
    return; // 401 already sent us to the sign-in page
  }
  document.body.dataset.role = session.role;
  document.getElementById("who-name").textContent = session.team ? `${session.name} (${session.team})` : session.name;
  document.getElementById("who-role").textContent = session.role.replace("_", " ");
  document.getElementById("sign-out").addEventListener("click", () => signOut());
  navToggle.addEventListener("click", () => {
    const open = navToggle.getAttribute("aria-expanded") !== "true";
    navToggle.setAttribute("aria-expanded", String(open));
    nav.classList.toggle("open", open);
    if (open) nav.querySelector("a").focus();
  });
  nav.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && nav.classList.contains("open")) {
      closeNav();
      navToggle.focus();
    }
  });
  // The skip link moves focus without touching the address (which holds the page).
  document.querySelector(".skip-link").addEventListener("click", (event) => {
    event.preventDefault();
    main.focus();
  });
  window.addEventListener("hashchange", () => route());
  await route();
}

start();
