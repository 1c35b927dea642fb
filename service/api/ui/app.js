// facemargin's page: every action is one plain request to the service's own API, so what
// the page shows is what a client gets. No framework, no build step, nothing fetched from
// anywhere else (the page's Content-Security-Policy allows only this origin).
"use strict";

const KEY_STORAGE = "facemargin.apiKey"; // sessionStorage: gone when the tab closes
const PAGE_SIZE = 20;

// ---------------------------------------------------------------------------- helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const fmt = {
  sim: (x) => (x === null || x === undefined ? "–" : Number(x).toFixed(4)),
  pct: (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(2)}%`),
  rate: (x) => (x === null || x === undefined ? "–" : Number(x).toExponential(0).replace("e-", "e−")),
};

class ApiError extends Error {
  constructor(status, body, requestId) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "http_error";
    this.details = error.details || {};
    this.requestId = (body && body.request_id) || requestId;
  }
}

async function api(method, path, form) {
  const headers = {};
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers["X-API-Key"] = key;
  let response;
  try {
    response = await fetch(path, { method, headers, body: form });
  } catch (failure) {
    throw new ApiError(0, { error: { code: "network_error", message: `the service did not answer: ${failure.message}` } });
  }
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { error: { code: "bad_response", message: text.slice(0, 300) } }; }
  if (!response.ok) throw new ApiError(response.status, body, response.headers.get("X-Request-ID"));
  return body;
}

// The API's error envelope, readable: code, message, what the details say, the request id.
function errorBox(error) {
  const box = el("div", { class: "error", role: "alert" },
    el("p", {}, el("strong", { text: error.code }), ` (HTTP ${error.status || "–"}): ${error.message}`));
  const details = Object.entries(error.details || {}).filter(([k]) => k !== "rejected");
  if (details.length) {
    box.append(el("dl", {}, details.map(([k, v]) => [el("dt", { text: k }), el("dd", { text: typeof v === "object" ? JSON.stringify(v) : String(v) })])));
  }
  if (error.status === 401) box.append(el("p", { text: "Enter an API key above (the service has keys on)." }));
  if (error.requestId) box.append(el("p", { class: "note", text: `request id ${error.requestId}` }));
  return box;
}

function show(container, ...nodes) {
  container.replaceChildren(...nodes.flat().filter((n) => n !== "" && n !== null && n !== undefined));
}

function busy(button, on) {
  button.disabled = on;
  button.setAttribute("aria-busy", on ? "true" : "false");
}

// ---------------------------------------------------------------------------- photos

// A photo drawn on a canvas at its own resolution (CSS scales it), with faces on top:
// box, five landmarks, and a label. Coordinates from the API are on the photo as sent.
async function drawPhoto(canvas, file, faces = [], labels = []) {
  const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const g = canvas.getContext("2d");
  if (document.getElementById("pixelate").checked) {
    // For demos on a shared screen: the photo as coarse blocks, the faces' marks still sharp.
    const block = Math.max(1, Math.round(Math.max(bitmap.width, bitmap.height) / 16));
    const small = el("canvas");
    small.width = Math.ceil(bitmap.width / block);
    small.height = Math.ceil(bitmap.height / block);
    small.getContext("2d").drawImage(bitmap, 0, 0, small.width, small.height);
    g.imageSmoothingEnabled = false;
    g.drawImage(small, 0, 0, bitmap.width, bitmap.height);
  } else {
    g.drawImage(bitmap, 0, 0);
  }
  const line = Math.max(2, Math.round(Math.max(bitmap.width, bitmap.height) / 200));
  faces.forEach((face, i) => {
    const { x1, y1, x2, y2 } = face.box;
    const colour = labels[i] && labels[i].colour ? labels[i].colour : "#2f80ed";
    g.lineWidth = line;
    g.strokeStyle = colour;
    g.strokeRect(x1, y1, x2 - x1, y2 - y1);
    g.fillStyle = "#f2c94c";
    for (const [x, y] of face.landmarks || []) {
      g.beginPath();
      g.arc(x, y, line * 1.2, 0, 2 * Math.PI);
      g.fill();
    }
    const text = labels[i] && labels[i].text;
    if (text) {
      const size = Math.max(12, line * 6);
      g.font = `${size}px sans-serif`;
      const width = g.measureText(text).width + line * 2;
      const top = Math.max(0, y1 - size - line * 2);
      g.fillStyle = colour;
      g.fillRect(x1, top, width, size + line * 2);
      g.fillStyle = "#fff";
      g.fillText(text, x1 + line, top + size);
    }
  });
  canvas.setAttribute("aria-label", `${file.name || "photo"}: ${faces.length} face(s) drawn`);
}

// A file input with drag-and-drop and, where the browser allows, the camera.
class PhotoPicker {
  constructor(root) {
    this.name = root.dataset.name;
    this.file = null;
    const id = `${root.closest("section").id}-${this.name}`;
    this.input = el("input", { type: "file", accept: "image/*", id, name: this.name });
    this.canvas = el("canvas", { class: "preview", id: `${id}-canvas`, role: "img", "aria-label": "no photo yet" });
    this.hint = el("p", { class: "note", text: "drop a photo here, or choose one" });
    const camera = el("button", { type: "button", class: "secondary", text: "Use the camera", id: `${id}-camera` });
    camera.hidden = !(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
    camera.addEventListener("click", () => takePhoto().then((file) => file && this.set(file)));
    root.classList.add("drop");
    root.append(el("label", { for: id, text: root.dataset.label }), this.input, camera, this.hint, this.canvas);
    this.input.addEventListener("change", () => this.input.files[0] && this.set(this.input.files[0]));
    root.addEventListener("dragover", (event) => { event.preventDefault(); root.classList.add("over"); });
    root.addEventListener("dragleave", () => root.classList.remove("over"));
    root.addEventListener("drop", (event) => {
      event.preventDefault();
      root.classList.remove("over");
      const file = event.dataTransfer.files[0];
      if (file) this.set(file);
    });
  }

  async set(file) {
    this.file = file;
    this.hint.textContent = file.name || "camera photo";
    try {
      await drawPhoto(this.canvas, file);
    } catch {
      // The browser cannot show it; the service will say what is wrong with it.
      this.canvas.width = 0;
      this.hint.textContent = `${file.name}: the browser cannot show this file`;
    }
  }

  async draw(faces, labels) {
    if (this.file) {
      try { await drawPhoto(this.canvas, this.file, faces, labels); } catch { /* shown as text */ }
    }
  }
}

let cameraStream = null;

async function takePhoto() {
  const dialog = document.getElementById("camera");
  const video = document.getElementById("camera-video");
  try {
    cameraStream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "user" } });
  } catch (failure) {
    alert(`The camera is not available: ${failure.message}`);
    return null;
  }
  video.srcObject = cameraStream;
  dialog.showModal();
  const file = await new Promise((resolve) => {
    document.getElementById("camera-take").onclick = () => {
      const canvas = el("canvas");
      canvas.width = video.videoWidth;
      canvas.height = video.videoHeight;
      canvas.getContext("2d").drawImage(video, 0, 0);
      canvas.toBlob((blob) => resolve(new File([blob], "camera.jpg", { type: "image/jpeg" })), "image/jpeg", 0.92);
    };
    document.getElementById("camera-cancel").onclick = () => resolve(null);
    dialog.oncancel = () => resolve(null);
  });
  cameraStream.getTracks().forEach((track) => track.stop());
  dialog.close();
  return file;
}

// ---------------------------------------------------------------------------- verify

function operatingPoint(threshold) {
  const parts = [`threshold ${fmt.sim(threshold.threshold)}`];
  if (threshold.far !== null && threshold.far !== undefined) parts.push(`FAR ${fmt.rate(threshold.far)}`);
  if (threshold.fpir !== null && threshold.fpir !== undefined) parts.push(`FPIR ${fmt.rate(threshold.fpir)}`);
  if (threshold.comparisons !== null && threshold.comparisons !== undefined) parts.push(`${threshold.comparisons} comparisons`);
  parts.push(threshold.source);
  return parts.join(" · ");
}

function setupVerify(pickers) {
  const form = document.getElementById("verify-form");
  const out = document.getElementById("verify-result");
  const button = document.getElementById("verify-submit");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const [a, b] = pickers;
    if (!a.file || !b.file) {
      show(out, el("p", { class: "error", role: "alert", text: "Choose two photos first." }));
      return;
    }
    const body = new FormData();
    body.append("image1", a.file, a.file.name || "image1.jpg");
    body.append("image2", b.file, b.file.name || "image2.jpg");
    const far = document.getElementById("verify-far").value;
    if (far) body.append("far", far);
    busy(button, true);
    show(out, el("p", { class: "note", text: "verifying…" }));
    try {
      const r = await api("POST", "/verify", body);
      await a.draw([r.faces[0]], [{ text: "face 1" }]);
      await b.draw([r.faces[1]], [{ text: "face 2" }]);
      show(out,
        el("p", { class: `decision ${r.match ? "yes" : "no"}`, id: "verify-decision", text: r.match ? "Same person" : "Different people" }),
        el("dl", { class: "figures" },
          el("dt", { text: "similarity" }), el("dd", { id: "verify-similarity", text: fmt.sim(r.similarity) }),
          el("dt", { text: "threshold" }), el("dd", { id: "verify-threshold", text: operatingPoint(r.threshold) }),
          el("dt", { text: "faces in the photos" }), el("dd", { text: `${r.faces[0].faces_in_image} and ${r.faces[1].faces_in_image}` }),
          el("dt", { text: "model" }), el("dd", { text: r.model_id })));
    } catch (error) {
      const field = error.details && error.details.field;
      if (field === "image1" || field === "image2") out.dataset.field = field;
      show(out, errorBox(error));
    } finally {
      busy(button, false);
    }
  });
}

// ---------------------------------------------------------------------------- enrol

function setupEnroll() {
  const form = document.getElementById("enroll-form");
  const input = document.getElementById("enroll-images");
  const thumbs = document.getElementById("enroll-previews");
  const out = document.getElementById("enroll-result");
  const button = document.getElementById("enroll-submit");
  input.addEventListener("change", () => {
    thumbs.replaceChildren(...[...input.files].map((file) => {
      const canvas = el("canvas", { class: "thumb", role: "img", "aria-label": file.name });
      drawPhoto(canvas, file).catch(() => {});
      return canvas;
    }));
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const files = [...input.files];
    const body = new FormData();
    body.append("subject_id", document.getElementById("enroll-subject").value.trim());
    const name = document.getElementById("enroll-name").value.trim();
    if (name) body.append("display_name", name);
    files.forEach((file) => body.append("images", file, file.name));
    busy(button, true);
    show(out, el("p", { class: "note", text: `enrolling ${files.length} photo(s)…` }));
    try {
      const r = await api("POST", "/enroll", body);
      show(out,
        el("p", { class: "decision yes", id: "enroll-summary", text: `${r.subject_id}: ${r.enrolled.length} enrolled, ${r.rejected.length} rejected; ${r.template_count} template(s) in all` }),
        photoTable(files, r.enrolled, r.rejected));
    } catch (error) {
      // A request refused as a whole still says, per photo, why (details.rejected).
      const rejected = (error.details && error.details.rejected) || [];
      show(out, errorBox(error), rejected.length ? photoTable(files, [], rejected) : "");
    } finally {
      busy(button, false);
    }
  });
}

function photoTable(files, enrolled, rejected) {
  const rows = [
    ...enrolled.map((e) => ({ index: e.index, result: "enrolled", detail: `template ${e.template_id}, quality ${e.quality === null ? "–" : e.quality.toFixed(2)}`, ok: true })),
    ...rejected.map((r) => ({ index: r.index, result: r.code, detail: r.message, ok: false })),
  ].sort((x, y) => x.index - y.index);
  return el("table", { id: "enroll-photos" },
    el("thead", {}, el("tr", {}, el("th", { text: "photo" }), el("th", { text: "result" }), el("th", { text: "detail" }))),
    el("tbody", {}, rows.map((row) => el("tr", { class: row.ok ? "ok" : "rejected" },
      el("td", { text: (files[row.index] && files[row.index].name) || `#${row.index + 1}` }),
      el("td", {}, el("code", { text: row.result })),
      el("td", { text: row.detail })))));
}

// ---------------------------------------------------------------------------- identify

function setupIdentify(picker) {
  const form = document.getElementById("identify-form");
  const out = document.getElementById("identify-result");
  const button = document.getElementById("identify-submit");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!picker.file) {
      show(out, el("p", { class: "error", role: "alert", text: "Choose a photo first." }));
      return;
    }
    const body = new FormData();
    body.append("image", picker.file, picker.file.name || "image.jpg");
    const fpir = document.getElementById("identify-fpir").value;
    if (fpir) body.append("fpir", fpir);
    if (document.getElementById("identify-all").checked) body.append("face_policy", "all");
    busy(button, true);
    show(out, el("p", { class: "note", text: "identifying…" }));
    try {
      const r = await api("POST", "/identify", body);
      const labels = r.faces.map((f, i) => ({
        text: f.decision === "match" ? f.subject_id : "unknown",
        colour: f.decision === "match" ? "#219653" : "#828282",
        i,
      }));
      await picker.draw(r.faces.map((f) => f.face), labels);
      show(out,
        el("p", { class: "note", id: "identify-threshold", text: operatingPoint(r.threshold) + ` · rule ${r.score_rule}` }),
        r.faces.map((f, i) => el("div", { class: "face-result" },
          el("p", { class: `decision ${f.decision === "match" ? "yes" : "no"}`, id: `identify-decision-${i}`, text: f.decision === "match" ? `Face ${i + 1}: ${f.subject_id}` : `Face ${i + 1}: unknown` }),
          f.candidates.length
            ? el("table", { class: "candidates" },
                el("thead", {}, el("tr", {}, el("th", { text: "candidate" }), el("th", { text: "similarity" }), el("th", { text: "" }))),
                el("tbody", {}, f.candidates.map((c) => el("tr", {},
                  el("td", { text: c.display_name ? `${c.subject_id} (${c.display_name})` : c.subject_id }),
                  el("td", { text: fmt.sim(c.similarity) }),
                  el("td", {}, meter(c.similarity, r.threshold.threshold))))))
            : el("p", { class: "note", text: "the gallery is empty" }))));
    } catch (error) {
      show(out, errorBox(error));
    } finally {
      busy(button, false);
    }
  });
}

// Similarity against the threshold: a bar that crosses the line only for a match.
function meter(similarity, threshold) {
  const bar = el("span", { class: `meter ${similarity >= threshold ? "over" : ""}`, "aria-hidden": "true" });
  const fill = el("span", { class: "fill" });
  const line = el("span", { class: "line" });
  fill.style.width = `${Math.max(0, Math.min(1, similarity)) * 100}%`;
  line.style.left = `${Math.max(0, Math.min(1, threshold)) * 100}%`;
  bar.append(fill, line);
  return bar;
}

// ---------------------------------------------------------------------------- gallery

const galleryState = { offset: 0, total: 0 };

async function loadGallery() {
  const list = document.getElementById("gallery-list");
  try {
    const page = await api("GET", `/subjects?limit=${PAGE_SIZE}&offset=${galleryState.offset}`);
    galleryState.total = page.total;
    const last = Math.min(page.offset + page.subjects.length, page.total);
    document.getElementById("gallery-position").textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}` : "empty";
    document.getElementById("gallery-prev").disabled = page.offset === 0;
    document.getElementById("gallery-next").disabled = last >= page.total;
    show(list, page.subjects.length
      ? el("table", { id: "gallery-table" },
          el("thead", {}, el("tr", {}, el("th", { text: "subject" }), el("th", { text: "name" }), el("th", { text: "templates" }), el("th", { text: "since" }), el("th", { text: "" }))),
          el("tbody", {}, page.subjects.map((s) => el("tr", { "data-subject": s.subject_id },
            el("td", {}, el("code", { text: s.subject_id })),
            el("td", { text: s.display_name || "" }),
            el("td", { text: s.template_count }),
            el("td", { text: new Date(s.created_at).toLocaleString() }),
            el("td", {}, el("button", { type: "button", class: "secondary", text: "Open", "aria-label": `Open ${s.subject_id}`, onclick: () => openSubject(s.subject_id) }))))))
      : el("p", { class: "note", text: "No subjects enrolled yet." }));
  } catch (error) {
    show(list, errorBox(error));
  }
}

async function openSubject(subjectId) {
  const detail = document.getElementById("gallery-detail");
  try {
    const s = await api("GET", `/subjects/${encodeURIComponent(subjectId)}`);
    show(detail, el("div", { class: "card", id: "subject-detail" },
      el("h3", { text: s.display_name ? `${s.subject_id} (${s.display_name})` : s.subject_id }),
      el("table", {},
        el("thead", {}, el("tr", {}, el("th", { text: "template" }), el("th", { text: "quality" }), el("th", { text: "created" }), el("th", { text: "" }))),
        el("tbody", {}, s.templates.map((t) => el("tr", {},
          el("td", { text: t.template_id }),
          el("td", { text: t.quality === null ? "–" : t.quality.toFixed(2) }),
          el("td", { text: new Date(t.created_at).toLocaleString() }),
          el("td", {}, el("button", { type: "button", class: "danger", text: "Delete", "aria-label": `Delete template ${t.template_id}`,
            onclick: () => remove(`/subjects/${encodeURIComponent(subjectId)}/templates/${t.template_id}`, `template ${t.template_id} of ${subjectId}`, subjectId) })))))),
      el("button", { type: "button", class: "danger", id: "delete-subject", text: `Delete ${subjectId} and all its templates`,
        onclick: () => remove(`/subjects/${encodeURIComponent(subjectId)}`, `${subjectId} and all its templates`, null) })));
    detail.querySelector("h3").setAttribute("tabindex", "-1");
    detail.querySelector("h3").focus();
  } catch (error) {
    show(detail, errorBox(error));
  }
}

async function remove(path, what, reopen) {
  if (!confirm(`Delete ${what}? This cannot be undone.`)) return;
  const detail = document.getElementById("gallery-detail");
  try {
    const r = await api("DELETE", path);
    const done = el("p", { class: "decision yes", id: "delete-result", text: `Deleted ${r.templates_removed} template(s) of ${r.subject_id}.` });
    show(detail);
    // The subject is shown again unless it went with its last template.
    if (reopen && (await api("GET", `/subjects/${encodeURIComponent(reopen)}`).then(() => true, () => false))) {
      await openSubject(reopen);
    }
    detail.prepend(done);
    await loadGallery();
  } catch (error) {
    show(detail, errorBox(error));
  }
}

function setupGallery() {
  document.getElementById("gallery-refresh").addEventListener("click", loadGallery);
  document.getElementById("gallery-prev").addEventListener("click", () => { galleryState.offset = Math.max(0, galleryState.offset - PAGE_SIZE); loadGallery(); });
  document.getElementById("gallery-next").addEventListener("click", () => { galleryState.offset += PAGE_SIZE; loadGallery(); });
}

// ---------------------------------------------------------------------------- service

async function loadService() {
  const out = document.getElementById("service-info");
  const ready = await api("GET", "/ready").catch((error) => ({ ready: false, error }));
  let info;
  try {
    info = await api("GET", "/info");
  } catch (error) {
    show(out, readiness(ready), errorBox(error));
    return;
  }
  const m = info.model;
  const validation = (m.validation || []).map((v) => el("tr", {},
    el("td", { text: v.protocol }), el("td", { text: `${fmt.pct(v.accuracy)} ± ${fmt.pct(v.accuracy_std)}` }), el("td", { text: fmt.pct(v.tar_at_far_1e3) })));
  const points = ((m.calibration && m.calibration.operating_points) || []).map((p) => el("tr", {},
    el("td", { text: fmt.rate(p.far) }), el("td", { text: fmt.sim(p.threshold) }), el("td", { text: fmt.pct(p.tar) })));
  show(out,
    readiness(ready),
    el("dl", { class: "figures", id: "service-model" },
      el("dt", { text: "model id" }), el("dd", {}, el("code", { id: "service-model-id", text: m.model_id })),
      el("dt", { text: "network" }), el("dd", { text: m.backbone || "–" }),
      el("dt", { text: "trained on" }), el("dd", { text: (m.training && m.training.data) || "–" }),
      el("dt", { text: "embedding" }), el("dd", { text: `${m.embedding_dim}-d, ${m.alignment_template} alignment` }),
      el("dt", { text: "detector" }), el("dd", { text: info.detector }),
      el("dt", { text: "runs on" }), el("dd", { text: info.providers.join(", ") }),
      el("dt", { text: "default FAR (verify)" }), el("dd", { text: fmt.rate(info.default_far) }),
      el("dt", { text: "API keys" }), el("dd", { text: info.auth ? "on" : "off" }),
      el("dt", { text: "gallery" }), el("dd", { text: info.gallery ? `${info.gallery.subjects} subjects, ${info.gallery.templates} templates (${info.gallery.index_kind} index)` : info.gallery_error || "–" }),
      el("dt", { text: "version" }), el("dd", { text: info.version })),
    validation.length ? el("table", { id: "service-validation" }, el("caption", { text: "Measured on held-out benchmarks" }),
      el("thead", {}, el("tr", {}, el("th", { text: "protocol" }), el("th", { text: "accuracy" }), el("th", { text: "TAR at FAR 1e−3" }))), el("tbody", {}, validation)) : "",
    points.length ? el("table", { id: "service-thresholds" }, el("caption", { text: `Calibrated thresholds (${m.calibration.protocol})` }),
      el("thead", {}, el("tr", {}, el("th", { text: "FAR" }), el("th", { text: "threshold" }), el("th", { text: "TAR" }))), el("tbody", {}, points)) : "");
}

function readiness(ready) {
  const checks = Object.entries(ready.checks || {}).map(([name, c]) => `${name} ${c.ok ? "ok" : "failing"}${c.detail ? ` (${c.detail})` : ""}`);
  return el("p", { class: `decision ${ready.ready ? "yes" : "no"}`, id: "service-ready", text: ready.ready ? `Ready: ${checks.join(", ")}` : `Not ready${checks.length ? `: ${checks.join(", ")}` : ""}` });
}

// ---------------------------------------------------------------------------- tabs, key

function setupTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const select = (tab) => {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute("aria-selected", on ? "true" : "false");
      t.tabIndex = on ? 0 : -1;
      document.getElementById(t.getAttribute("aria-controls")).hidden = !on;
    }
    tab.focus();
    const panel = tab.getAttribute("aria-controls");
    history.replaceState(null, "", `#${panel}`);
    if (panel === "gallery") loadGallery();
    if (panel === "service") loadService();
  };
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (step) select(tabs[(i + step + tabs.length) % tabs.length]);
      if (event.key === "Home") select(tabs[0]);
      if (event.key === "End") select(tabs[tabs.length - 1]);
    });
  });
  const wanted = tabs.find((t) => `#${t.getAttribute("aria-controls")}` === location.hash);
  if (wanted) select(wanted);
}

function setupKey() {
  const input = document.getElementById("api-key");
  input.value = sessionStorage.getItem(KEY_STORAGE) || "";
  input.addEventListener("input", () => {
    if (input.value) sessionStorage.setItem(KEY_STORAGE, input.value);
    else sessionStorage.removeItem(KEY_STORAGE);
  });
  document.getElementById("key-form").addEventListener("submit", (event) => event.preventDefault());
}

document.addEventListener("DOMContentLoaded", () => {
  const pickers = Object.fromEntries([...document.querySelectorAll(".photo-picker")].map((root) => [`${root.closest("section").id}.${root.dataset.name}`, new PhotoPicker(root)]));
  setupKey();
  setupVerify([pickers["verify.image1"], pickers["verify.image2"]]);
  setupEnroll();
  setupIdentify(pickers["identify.image"]);
  setupGallery();
  document.getElementById("service-refresh").addEventListener("click", loadService);
  setupTabs();
  document.body.dataset.ready = "true";
});
