// Settings → API Keys: the keys API at /api/v1/keys, called with a key the person pastes.
// The key is held in `apiKey` only: never in a URL, storage or a cookie. Text from the server
// goes into the page with textContent only.
"use strict";

const API = "/api/v1/keys";
let apiKey = null;

const $ = (id) => document.getElementById(id);

function showError(message) {
  $("error").textContent = message || "";
}

// The envelope's message, with its code and request id; or what went wrong on the way.
async function errorOf(response) {
  try {
    const error = (await response.json()).error;
    if (error && error.message) {
      const id = error.request_id ? ", request " + error.request_id : "";
      return error.message + " (" + error.code + id + ")";
    }
  } catch (_) { /* not the envelope */ }
  return "The server answered " + response.status + " " + response.statusText + ".";
}

// While a request is under way, <main aria-busy="true">.
let pending = 0;
function busy(change) {
  pending += change;
  document.querySelector("main").setAttribute("aria-busy", pending > 0 ? "true" : "false");
}

async function call(method, path, body) {
  busy(+1);
  try {
    return await send(method, path, body);
  } finally {
    busy(-1);
  }
}

async function send(method, path, body) {
  const headers = { "X-API-Key": apiKey };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method, headers, cache: "no-store", credentials: "omit",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (_) {
    throw new Error("The server could not be reached.");
  }
  if (!response.ok) throw new Error(await errorOf(response));
  return response.status === 204 ? null : response.json();
}

// "2026-12-02T19:30:05Z" as "2026-12-02 19:30 UTC".
function when(text, none) {
  if (!text) return none;
  const match = /^(\d{4}-\d\d-\d\d)T(\d\d:\d\d)/.exec(text);
  return match ? match[1] + " " + match[2] + " UTC" : text;
}

function cell(row, text, code) {
  const td = document.createElement("td");
  if (code) {
    const c = document.createElement("code");
    c.textContent = text;
    td.appendChild(c);
  } else {
    td.textContent = text;
  }
  row.appendChild(td);
  return td;
}

function render(keys) {
  const rows = $("rows");
  rows.replaceChildren();
  if (keys.length === 0) {
    const row = rows.insertRow();
    const td = cell(row, "No keys.");
    td.colSpan = 9;
  }
  for (const key of keys) {
    const row = document.createElement("tr");
    if (key.revoked_at || key.disabled_at) row.className = "revoked";
    cell(row, key.name);
    cell(row, key.hint || "—", true);
    cell(row, key.mode);
    cell(row, key.scopes ? key.scopes.join(", ") : "full access");
    cell(row, when(key.created_at, "—")).className = "when";
    cell(row, when(key.last_used_at, "never")).className = "when";
    cell(row, when(key.expires_at, "never")).className = "when";
    cell(row, key.revoked_at ? "revoked " + when(key.revoked_at, "")
      : key.disabled_at ? "disabled " + when(key.disabled_at, "") : "active");
    const actions = cell(row, "");
    if (!key.revoked_at) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "danger";
      button.textContent = "Revoke";
      button.setAttribute("aria-label", "Revoke key " + key.name);
      button.addEventListener("click", () => revoke(key));
      actions.appendChild(button);
    }
    rows.appendChild(row);
  }
}

async function refresh() {
  const answer = await call("GET", API);
  render(answer.data);
}

// Runs `action`, showing its error if it fails; clears the last error if it succeeds.
async function attempt(action) {
  try {
    await action();
    showError("");
  } catch (error) {
    showError(error.message);
  }
}

function hideCreated() {
  $("new-key").textContent = "";
  $("copy-status").textContent = "";
  $("created").hidden = true;
}

async function revoke(key) {
  const label = key.name + (key.hint ? " (" + key.hint + ")" : "");
  if (!window.confirm("Revoke the key " + label + "? Requests with it are refused at once; this cannot be undone.")) return;
  await attempt(async () => {
    await call("DELETE", API + "/" + encodeURIComponent(key.id));
    await refresh();
  });
}

$("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("key");
  const pasted = input.value.trim();
  input.value = "";
  if (!pasted) return;
  apiKey = pasted;
  hideCreated();
  $("rows").replaceChildren();
  $("key-status").textContent = "Using the key ending in …" + pasted.slice(-4) + ", held in this page's memory only.";
  $("keys").hidden = false;
  try {
    await refresh();
    showError("");
  } catch (error) {
    // Refused (or not answered): nothing to show for this key; it is not kept.
    showError(error.message);
    apiKey = null;
    $("keys").hidden = true;
    $("key-status").textContent = "No key in use: paste a key with keys:read and keys:write.";
  }
});

$("refresh").addEventListener("click", () => attempt(refresh));

$("forget").addEventListener("click", () => {
  apiKey = null;
  hideCreated();
  $("rows").replaceChildren();
  $("keys").hidden = true;
  $("key-status").textContent = "Key forgotten. Paste a key to go on.";
  showError("");
});

$("create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = $("name").value.trim();
  if (!name) return;
  await attempt(async () => {
    const created = await call("POST", API, { name });
    $("name").value = "";
    $("new-key").textContent = created.key;
    $("copy-status").textContent = "";
    $("created").hidden = false;
    $("copy").focus();
    await refresh();
  });
});

$("copy").addEventListener("click", async () => {
  const text = $("new-key").textContent;
  try {
    await navigator.clipboard.writeText(text);
    $("copy-status").textContent = "Copied.";
  } catch (_) {
    const range = document.createRange();
    range.selectNodeContents($("new-key"));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    $("copy-status").textContent = "Selected: press Ctrl+C (⌘C) to copy.";
  }
});

$("done").addEventListener("click", hideCreated);
