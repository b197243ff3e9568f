// The demo page: pick or drop an image, type labels, POST /classify (multipart), draw the ranked scores as bars.
// Plain browser JavaScript, no libraries and no CDN, so the page works offline. URLs are relative to the page.
"use strict";

const $ = (id) => document.getElementById(id);
let image = null; // the File to classify

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body.error && body.error.message) return `${response.status}: ${body.error.message}`;
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

async function loadInfo() {
  try {
    const response = await fetch("info", { headers: authHeaders() });
    if (!response.ok) throw new Error(await errorMessage(response));
    const info = await response.json();
    $("model-info").textContent = `model ${info.model} · fingerprint ${info.fingerprint} · ${info.dimensions} ` +
      `dimensions · ${info.backend} on ${info.device} (${info.precision})` + (info.ready ? "" : " · warming up");
    for (const name of info.template_sets || []) {
      if (name === "default" || $("templates").querySelector(`option[value="${name}"]`)) continue;
      const option = document.createElement("option");
      option.value = name;
      option.textContent = `${name} (built-in set)`;
      $("templates").appendChild(option);
    }
  } catch (err) {
    $("model-info").textContent = "model not ready: " + err.message + " (reload in a moment)";
  }
}

function setImage(file) {
  if (!file) return;
  image = file;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-hint").textContent = file.name;
}

function labels() {
  return $("labels").value.split(/[\n,]/).map((s) => s.trim()).filter((s) => s.length > 0);
}

function render(results) {
  const list = $("results");
  list.replaceChildren();
  for (const { label, score } of results) {
    const item = document.createElement("li");
    item.className = "result";
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = label;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = (100 * score).toFixed(1) + "%";
    bar.appendChild(fill);
    const value = document.createElement("span");
    value.className = "score";
    value.textContent = (100 * score).toFixed(1) + "%";
    item.append(name, bar, value);
    list.appendChild(item);
  }
}

async function classify() {
  showError("");
  const names = labels();
  if (!image) return showError("Pick or drop an image first.");
  if (names.length === 0) return showError("Type at least one label.");
  const form = new FormData();
  form.append("file", image, image.name || "image");
  for (const name of names) form.append("labels", name);
  if ($("templates").value) form.append("templates", $("templates").value);
  const button = $("classify");
  button.disabled = true;
  const start = performance.now();
  try {
    const response = await fetch("classify", { method: "POST", body: form, headers: authHeaders() });
    if (!response.ok) throw new Error(await errorMessage(response));
    const body = await response.json();
    render(body.results[0]);
    $("timing").textContent = `${Math.round(performance.now() - start)} ms · model ${body.model}`;
  } catch (err) {
    showError(err.message);
  } finally {
    button.disabled = false;
  }
}

function wireDrop() {
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => setImage(e.dataTransfer.files[0]));
  $("file").addEventListener("change", (e) => setImage(e.target.files[0]));
}

function rememberKey() {
  const key = $("api-key");
  key.value = sessionStorage.getItem("clip-serve-api-key") || "";
  key.addEventListener("change", () => {
    sessionStorage.setItem("clip-serve-api-key", key.value);
    loadInfo();
  });
}

wireDrop();
rememberKey();
$("classify").addEventListener("click", classify);
$("labels").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) classify(); });
loadInfo();
