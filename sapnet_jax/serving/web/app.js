// The de-raining page: each chosen or dropped photo is posted to /v1/derain on its own, a few
// at a time, so one failure or one slow photo never holds the others back. XMLHttpRequest (not
// fetch) because only it reports upload progress.
"use strict";

const PARALLEL = 3;  // uploads in flight; the server batches same-size ones
// A server started with a token wants it on every API call. It is asked for once and kept for
// this tab only (sessionStorage), never in the page's address or in a cookie another site's
// request would carry.
const TOKEN_KEY = "sapnet-serve-token";
const queue = [];
let running = 0;

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function askForToken(reason) {
  document.getElementById("drop").hidden = true;
  document.getElementById("options").hidden = true;
  document.getElementById("token-form").hidden = false;
  const error = document.getElementById("token-error");
  error.textContent = reason || "";
  error.hidden = !reason;
  document.getElementById("token").focus();
}

function stemOf(name) {
  const dot = name.lastIndexOf(".");
  return (dot > 0 ? name.slice(0, dot) : name) || "image";
}

function formatBytes(n) {
  return n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MB` : `${Math.ceil(n / 1024)} kB`;
}

function addCard(file) {
  const card = document.getElementById("card").content.firstElementChild.cloneNode(true);
  card.querySelector(".name").textContent = file.name;
  card.querySelector(".upload").setAttribute("aria-label", `Upload of ${file.name}`);
  card.querySelector(".slider").setAttribute("aria-label", `Before/after split for ${file.name}`);
  document.getElementById("results").append(card);
  return card;
}

function setState(card, state, text) {
  card.dataset.state = state;
  card.querySelector(".state").textContent = text;
}

function fail(card, reason) {
  setState(card, "error", "Failed");
  card.querySelector(".upload").hidden = true;
  const error = card.querySelector(".error");
  error.textContent = reason;
  error.hidden = false;
}

// The server answers errors as JSON {"error": reason}; anything else still gets a reason.
async function errorReason(xhr) {
  try {
    const body = JSON.parse(await xhr.response.text());
    if (body && typeof body.error === "string") return body.error;
  } catch (_) { /* not JSON: fall through */ }
  return `HTTP ${xhr.status} ${xhr.statusText || ""}`.trim();
}

function showResult(card, file, scale, blob, xhr) {
  const before = URL.createObjectURL(file);
  const after = URL.createObjectURL(blob);
  const stem = stemOf(file.name);
  card.querySelector(".before").src = before;
  card.querySelector(".before").alt = `${file.name}, original`;
  card.querySelector(".after").src = after;
  card.querySelector(".after").alt = `${file.name}, de-rained`;
  const link = card.querySelector(".download");
  link.href = after;
  link.download = `${stem}_derained.png`;
  link.textContent = `Download ${stem}_derained.png`;
  const size = xhr.getResponseHeader("X-Image-Size") || "";
  const batch = xhr.getResponseHeader("X-Batch-Size") || "1";
  const timing = /derain;dur=([\d.]+)/.exec(xhr.getResponseHeader("Server-Timing") || "");
  // The working scale the server used: what was asked for, or what auto chose.
  const used = xhr.getResponseHeader("X-Scale");
  card.querySelector(".info").textContent = [size, formatBytes(blob.size),
    timing ? `${(Number(timing[1]) / 1000).toFixed(2)} s` : "",
    used ? `scale ${used}${scale === "auto" ? " (auto)" : ""}` : "",
    batch !== "1" ? `batch of ${batch}` : ""].filter(Boolean).join(" · ");
  const slider = card.querySelector(".slider");
  const split = () => {
    card.querySelector(".before").style.clipPath = `inset(0 ${100 - slider.value}% 0 0)`;
    card.querySelector(".divider").style.left = `${slider.value}%`;
  };
  slider.addEventListener("input", split);
  split();
  card.querySelector(".upload").hidden = true;
  card.querySelector(".result").hidden = false;
  setState(card, "done", "Done");
}

function upload(file, card, scale) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    const progress = card.querySelector(".upload");
    xhr.open("POST", `/v1/derain?scale=${encodeURIComponent(scale)}`);
    for (const [key, value] of Object.entries(authHeaders())) xhr.setRequestHeader(key, value);
    xhr.responseType = "blob";
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) progress.value = Math.round((100 * e.loaded) / e.total);
      setState(card, "uploading", `Uploading… ${progress.value}%`);
    });
    xhr.upload.addEventListener("load", () => {
      progress.value = 100;
      setState(card, "deraining", "De-raining…");
    });
    xhr.addEventListener("load", async () => {
      if (xhr.status === 200) showResult(card, file, scale, xhr.response, xhr);
      else fail(card, await errorReason(xhr));
      if (xhr.status === 401) askForToken("The server did not accept the token: enter it again.");
      resolve();
    });
    xhr.addEventListener("error", () => { fail(card, "Network error: the server did not answer"); resolve(); });
    xhr.addEventListener("timeout", () => { fail(card, "The server took too long"); resolve(); });
    const form = new FormData();
    form.append("image", file, file.name);
    setState(card, "uploading", "Uploading… 0%");
    xhr.send(form);
  });
}

function pump() {
  while (running < PARALLEL && queue.length) {
    const { file, card, scale } = queue.shift();
    running += 1;
    upload(file, card, scale).finally(() => { running -= 1; pump(); });
  }
}

// Each photo keeps the scale chosen when it was added, whatever is chosen while it waits.
function addFiles(files) {
  const scale = document.getElementById("scale").value;
  for (const file of files) queue.push({ file, card: addCard(file), scale });
  pump();
}

// The scale control starts at the server's default (`serve --scale`), which may be a number
// the list does not offer: it is added then.
function showScale(value) {
  if (value === undefined || value === null) return;
  const select = document.getElementById("scale");
  const text = String(value);
  if (![...select.options].some((o) => o.value === text)) select.add(new Option(text, text));
  select.value = text;
}

async function showModel() {
  const line = document.getElementById("model");
  try {
    const response = await fetch("/v1/models", { headers: authHeaders() });
    if (response.status === 401) {
      const had = sessionStorage.getItem(TOKEN_KEY);
      sessionStorage.removeItem(TOKEN_KEY);
      line.textContent = "This server requires an access token.";
      askForToken(had ? "That token was not accepted." : "");
      return;
    }
    const info = await response.json();
    document.getElementById("token-form").hidden = true;
    document.getElementById("drop").hidden = false;
    document.getElementById("options").hidden = false;
    showScale(info.limits.scale);
    const model = info.models[0];
    line.textContent = `Model: ${model.name}${model.description ? ` (${model.description})` : ""}`;
    document.getElementById("limits").textContent =
      `Up to ${formatBytes(info.limits.max_bytes)} and ${(info.limits.max_pixels / 1e6).toFixed(0)} megapixels per photo.`;
  } catch (_) {
    line.textContent = "Model information is unavailable.";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const input = document.getElementById("files");
  input.addEventListener("change", () => { addFiles(input.files); input.value = ""; });
  const drop = document.getElementById("drop");
  for (const kind of ["dragenter", "dragover"]) {
    drop.addEventListener(kind, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const kind of ["dragleave", "drop"]) {
    drop.addEventListener(kind, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => { e.preventDefault(); addFiles(e.dataTransfer.files); });
  document.getElementById("token-form").addEventListener("submit", (e) => {
    e.preventDefault();  // no navigation: the token goes in a header, never in a URL
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
    document.getElementById("token").value = "";
    showModel();
  });
  showModel();
});
