// The sign-in form: the key goes to POST /ui/login once, which answers a session cookie; the key
// itself is never stored by the page.

const form = document.getElementById("login-form");
const input = document.getElementById("key");
const error = document.getElementById("login-error");
const button = document.getElementById("sign-in");

function showError(message) {
  error.textContent = message;
  input.setAttribute("aria-invalid", "true");
  input.focus();
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.textContent = "";
  input.removeAttribute("aria-invalid");
  const key = input.value.trim();
  if (!key) {
    showError("Enter a key.");
    return;
  }
  button.disabled = true;
  try {
    const response = await fetch("/ui/login", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      credentials: "same-origin",
      body: JSON.stringify({ key }),
    });
    if (response.ok) {
      // Back to the page that sent the user here (/ui#/ledger redirects to /ui/login#/ledger).
      location.assign(location.hash.startsWith("#/") ? `/ui${location.hash}` : "/ui");
      return;
    }
    let message = `Sign-in failed (${response.status}).`;
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) message = body.error.message;
    } catch {
      // Not JSON: keep the status.
    }
    showError(message);
  } catch (err) {
    showError(`The gateway could not be reached (${err.message}).`);
  } finally {
    button.disabled = false;
  }
});

input.focus();
