"use strict";
// The page uses only the service's public HTTP API. URLs are relative so that it also works behind a proxy that
// serves the service under a path prefix.

const KEY_STORE = "jmvae-api-key";
const EDIT_DELAY_MS = 150;
// Seeds the page draws itself stay exact in a JS number (the service accepts up to 2^63, which JSON.parse rounds).
const MAX_SEED = Number.MAX_SAFE_INTEGER;

const $ = (id) => document.getElementById(id);
const state = {
  names: [],                // the model's attribute names, in its order
  typical: {},              // the model's default attributes (a typical face), by name
  photo: null,              // the last photo the service accepted
  photoAttributes: null,    // its attributes w as -1/1, by name
  previewUrl: null,
  reading: null,            // a new photo on its way to the service: slider moves wait for it
  editTimer: 0,
  editSeq: 0,               // only the newest edit request may update the page
  editAbort: null,
};

class ApiError extends Error {
  constructor(status, code, detail, retryAfter) {
    super(detail);
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

const label = (name) => name.replaceAll("_", " ");
const pngUrl = (base64) => `data:image/png;base64,${base64}`;

async function api(path, options = {}) {
  const headers = new Headers(options.headers);
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers.set("Authorization", `Bearer ${key}`);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "network", "the service could not be reached");
  }
  const body = await response.json().catch((error) => {
    if (error.name === "AbortError") throw error;
    return null; // not JSON: e.g. a proxy's own error page
  });
  if (!response.ok) {
    throw new ApiError(response.status, body?.error ?? "", body?.detail ?? response.statusText,
                       response.headers.get("Retry-After"));
  }
  return body;
}

function describe(error) {
  const retry = error.retryAfter ? ` in ${error.retryAfter} s` : " in a moment";
  switch (error.status) {
    case 0: return "The service could not be reached. Check that it is running, then try again.";
    case 401: return sessionStorage.getItem(KEY_STORE)
      ? "That API key was refused. Enter the right key."
      : "This service needs an API key. Enter it below.";
    case 413: return `That image is too large for this service (${error.detail}). Try a smaller photo.`;
    case 415: return `That file is not an image the service can read: ${error.detail}.`;
    case 422: return `The service could not use that input: ${error.detail}.`;
    case 503: return error.code === "not_ready"
      ? `The model is still warming up. Try again${retry}.`
      : `The service is busy. Try again${retry}.`;
    default: return `The service failed (HTTP ${error.status}): ${error.detail}`;
  }
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(error) {
  if (error.name === "AbortError") return;
  if (!(error instanceof ApiError)) throw error; // a bug in this page: let the console show it
  setStatus("");
  $("error").textContent = describe(error);
  $("error").hidden = false;
  if (error.status === 401) {
    $("key-form").hidden = false;
    $("api-key").focus();
  }
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// Model ---------------------------------------------------------------------------------------------------------
async function loadModel() {
  clearError();
  let info;
  try {
    info = await api("model");
  } catch (error) {
    $("model-info").textContent = "Not connected.";
    showError(error);
    return;
  }
  $("key-form").hidden = true;
  $("model-info").textContent =
    `Model ${info.checkpoint} on ${info.device} (${info.inference_mode} inference, ` +
    `${info.image_size}×${info.image_size} images)`;
  state.typical = info.default_attributes;
  if (state.names.length === 0) buildSliders(info.attribute_names, info.default_attributes);
  $("photo").disabled = false;
  $("generate").disabled = false;
}

function buildSliders(names, values) {
  state.names = names;
  for (const name of names) {
    const id = `attr-${name}`;
    const input = el("input", { type: "range", id, min: -2, max: 2, step: 0.5, value: values[name] });
    input.dataset.name = name;
    $("sliders").append(el("div", { className: "slider" },
      el("label", { htmlFor: id }, label(name)), input, el("output", { htmlFor: id, id: `${id}-value` })));
    showSliderValue(input);
  }
}

function slider(name) {
  return $(`attr-${name}`);
}

function showSliderValue(input) {
  $(`${input.id}-value`).value = Number(input.value).toString();
  const base = state.photoAttributes?.[input.dataset.name];
  input.parentElement.classList.toggle("changed", base !== undefined && Number(input.value) !== base);
}

function sliderValues() {
  return Object.fromEntries(state.names.map((name) => [name, Number(slider(name).value)]));
}

function setSliders(values) {
  for (const name of state.names) {
    slider(name).value = values[name];
    showSliderValue(slider(name));
  }
}

// Photo and edits -------------------------------------------------------------------------------------------------
async function loadPhoto(file) {
  clearError();
  setStatus("Reading the face…");
  clearTimeout(state.editTimer);
  state.reading = file;
  let body;
  try {
    body = await requestEdit(file, {});
  } catch (error) {
    if (error.name !== "AbortError") clearPhoto(); // the results on show would be taken for this file's
    showError(error);
    return;
  } finally {
    if (state.reading === file) state.reading = null;
  }
  if (body === null) return; // a newer request took over
  state.photo = file;
  state.photoAttributes = body.attributes;
  setSliders(body.attributes);
  $("reset").disabled = false;
  showPhoto(file, body);
  showEdit(body);
  setStatus(body.face_detected ? "Face read." : "No face found; the centre of the image was used.");
}

// POST /edit; resolves to null when a newer edit was started meanwhile (its answer would be stale).
async function requestEdit(file, changes) {
  const seq = ++state.editSeq;
  state.editAbort?.abort();
  const abort = new AbortController();
  state.editAbort = abort;
  const form = new FormData();
  form.append("image", file);
  form.append("changes", JSON.stringify(changes));
  $("edit-images").setAttribute("aria-busy", "true");
  try {
    const body = await api("edit", { method: "POST", body: form, signal: abort.signal });
    return seq === state.editSeq ? body : null;
  } catch (error) {
    if (seq !== state.editSeq) return null;
    throw error;
  } finally {
    if (seq === state.editSeq) $("edit-images").setAttribute("aria-busy", "false");
  }
}

function scheduleEdit() {
  clearTimeout(state.editTimer);
  state.editTimer = setTimeout(async () => {
    const values = sliderValues();
    const changes = Object.fromEntries(
      Object.entries(values).filter(([name, value]) => value !== state.photoAttributes[name]));
    try {
      const body = await requestEdit(state.photo, changes);
      if (body !== null) {
        clearError();
        showEdit(body);
      }
    } catch (error) {
      showError(error);
    }
  }, EDIT_DELAY_MS);
}

// Forgets the previous photo: its preview, crop, attributes and edits, and the sliders go back to the typical face.
function clearPhoto() {
  state.photo = null;
  state.photoAttributes = null;
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = null;
  $("photo-preview").removeAttribute("src");
  $("attribute-bars").replaceChildren();
  $("face-result").hidden = true;
  $("face-note").hidden = true;
  $("face-note").textContent = "";
  for (const id of ["input-face", "x-mean", "x-prime-mean", "edited-face"]) {
    $(id).removeAttribute("src");
    $(`${id}-download`).removeAttribute("href");
  }
  $("edit-images").hidden = true;
  $("reset").disabled = true;
  setSliders(state.typical);
}

function showPhoto(file, body) {
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(file);
  const preview = $("photo-preview");
  preview.onload = () => {
    const box = $("crop-box").style;
    box.left = `${(100 * body.box.left) / preview.naturalWidth}%`;
    box.top = `${(100 * body.box.top) / preview.naturalHeight}%`;
    box.width = `${(100 * body.box.width) / preview.naturalWidth}%`;
    box.height = `${(100 * body.box.height) / preview.naturalHeight}%`;
  };
  preview.src = state.previewUrl;
  $("face-note").hidden = body.face_detected;
  $("face-note").textContent = body.face_detected ? "" :
    `Not a face? The service says: ${body.note}. The attributes below describe that crop.`;
  const sorted = Object.entries(body.probabilities).sort((a, b) => b[1] - a[1]);
  $("attribute-bars").replaceChildren(...sorted.map(([name, p]) => {
    const fill = el("span", { className: "fill" });
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    return el("li", { className: p >= 0.5 ? "present" : "" },
      el("span", { className: "name" }, label(name)),
      el("span", { className: "bar" }, fill),
      el("span", { className: "value" }, `${Math.round(100 * p)}%`));
  }));
  $("face-result").hidden = false;
}

function showEdit(body) {
  for (const [id, key] of [["input-face", "input_face"], ["x-mean", "x_mean"], ["x-prime-mean", "x_prime_mean"],
                           ["edited-face", "edited_face"]]) {
    $(id).src = pngUrl(body[key]);
    $(`${id}-download`).href = pngUrl(body[key]);
  }
  $("edit-images").hidden = false;
}

// Generation ------------------------------------------------------------------------------------------------------
async function generate(event) {
  event.preventDefault();
  clearError();
  const seedText = $("seed").value.trim();
  // Without a photo only the sliders moved away from the typical face are sent: the service sets the others to
  // their most likely values given those (a bald face is a man's), and the sliders then show what it used.
  const values = sliderValues();
  const attributes = state.photo ? values : Object.fromEntries(
    Object.entries(values).filter(([name, value]) => value !== state.typical[name]));
  const request = {
    attributes,
    n: Number($("count").value),
    zeta: Number($("zeta").value),
    seed: seedText === "" ? Math.floor(Math.random() * MAX_SEED) : Number(seedText),
  };
  setStatus("Generating…");
  $("generate").disabled = true;
  try {
    const body = await api("generate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
    });
    if (!state.photo) setSliders(body.attributes);
    $("generate-info").textContent = `Seed ${body.seed}, ζ ${body.zeta}: the same seed gives the same faces.`;
    $("generated").replaceChildren(
      face(body.average_face, "average face", "average-face.png"),
      ...body.faces.map((b64, i) => face(b64, `random face ${i + 1}`, `face-${body.seed}-${i + 1}.png`)));
    setStatus(`Generated ${body.faces.length} random faces and the average face.`);
  } catch (error) {
    showError(error);
  } finally {
    $("generate").disabled = false;
  }
}

function face(base64, caption, filename) {
  const url = pngUrl(base64);
  const link = el("a", { href: url, download: filename, ariaLabel: `Download ${caption} as PNG` }, "PNG");
  return el("figure", { className: "face" }, el("img", { src: url, alt: caption }),
            el("figcaption", {}, `${caption} `, link));
}

// Wiring ----------------------------------------------------------------------------------------------------------
function takeFile(file) {
  if (file && !$("photo").disabled) loadPhoto(file);
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
  $("api-key").value = "";
  loadModel();
});
$("photo").addEventListener("change", () => takeFile($("photo").files[0]));
$("sliders").addEventListener("input", (event) => {
  showSliderValue(event.target);
  if (state.photo && !state.reading) scheduleEdit();
});
$("reset").addEventListener("click", () => {
  setSliders(state.photoAttributes);
  scheduleEdit();
});
$("generate-form").addEventListener("submit", generate);
document.addEventListener("dragover", (event) => {
  event.preventDefault();
  $("drop-zone").classList.add("dragging");
});
document.addEventListener("dragleave", (event) => {
  if (event.relatedTarget === null) $("drop-zone").classList.remove("dragging");
});
document.addEventListener("drop", (event) => {
  event.preventDefault();
  $("drop-zone").classList.remove("dragging");
  takeFile(event.dataTransfer.files[0]);
});

loadModel();
