"use strict";
// The zone editor of the policies page (templates/zones.html): the camera's newest released frame
// (redacted; fetched with the bearer header into a blob: URL) under an SVG overlay on which the
// officer draws, drags and deletes polygons. Every change is written into the policy's "zones"
// field as JSON (points relative to the picture, 4 decimals), and what is typed in that field is
// drawn: saving and activating are the page's usual form and button.
const consoleZones = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const NAME = /^[a-z0-9][a-z0-9-]{0,31}$/;
  const round = (v) => Math.round(Math.min(1, Math.max(0, v)) * 1e4) / 1e4;
  const REFRESH = 5000; // ms between two fetches of the released picture (the withheld one: on demand only, each is logged)
  const isPoint = (p) => Array.isArray(p) && p.length === 2 && p.every((v) => typeof v === "number" && isFinite(v));

  function svgElement(name, attributes, parent) {
    const element = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
    if (parent) parent.append(element);
    return element;
  }

  function htmlElement(name, properties, parent) {
    const element = Object.assign(document.createElement(name), properties);
    if (parent) parent.append(element);
    return element;
  }

  // BGR [b, g, r] (the policy's colours) to and from an <input type=color> value
  const toHex = (bgr) => "#" + [bgr[2], bgr[1], bgr[0]].map((v) => Number(v).toString(16).padStart(2, "0")).join("");
  const fromHex = (hex) => [5, 3, 1].map((i) => parseInt(hex.slice(i, i + 2), 16));

  // attach the editor inside ``main``; returns a function that ends it (its live preview, its listeners)
  function attach(main) {
    const editor = main.querySelector("#zone-editor");
    if (!editor) return () => {};
    const field = main.querySelector("#f-zones");
    const svg = editor.querySelector("#zone-overlay");
    const img = editor.querySelector("#zone-picture");
    const caption = editor.querySelector("#zone-caption");
    const note = editor.querySelector("#zone-note");
    const list = editor.querySelector("#zone-list");
    const button = (id) => editor.querySelector("#zone-" + id);
    const camera = editor.dataset.camera;
    const methods = editor.dataset.methods.split(" ");
    const modes = editor.dataset.modes.split(" ");
    let zones = {};
    let selected = null; // the zone whose corners have handles
    let draft = null; // the corners of the zone being drawn
    let drag = null; // {name, index} of the corner being dragged
    let size = [1280, 720]; // the picture's pixels: the overlay's coordinates
    let objectUrl = null;
    let retry = null;
    let ended = false;

    const say = (text) => { note.textContent = text; };

    function readField() {
      const text = field.value.trim();
      if (text === "") { zones = {}; return true; }
      try {
        const value = JSON.parse(text);
        if (value === null || typeof value !== "object" || Array.isArray(value)) {
          throw new Error("expected an object of zones by name");
        }
        zones = value;
        say("");
        return true;
      } catch (error) {
        say("The zones field is not valid JSON (" + error.message + "); the picture shows the last valid zones.");
        return false;
      }
    }

    // one zone a line, so the field stays readable and editable by hand
    function writeField() {
      const names = Object.keys(zones);
      field.value = names.length
        ? "{\n" + names.map((name) => "  " + JSON.stringify(name) + ": " + JSON.stringify(zones[name])).join(",\n") + "\n}"
        : "{}";
    }

    const corners = (zone) => (zone && Array.isArray(zone.polygon) ? zone.polygon.filter(isPoint) : []);
    const at = (point) => [point[0] * size[0], point[1] * size[1]];

    function render(focus) {
      renderOverlay(focus);
      renderList();
    }

    function renderOverlay(focus) {
      svg.replaceChildren();
      svg.setAttribute("viewBox", "0 0 " + size[0] + " " + size[1]);
      const radius = Math.max(size[0], size[1]) / 110;
      for (const [name, zone] of Object.entries(zones)) {
        const points = corners(zone);
        if (points.length < 2) continue;
        const group = svgElement("g", { class: "zone " + (zone.mode === "liftable" ? "liftable" : "permanent")
          + (name === selected ? " selected" : ""), "data-zone": name }, svg);
        svgElement("polygon", { points: points.map((p) => at(p).join(",")).join(" ") }, group);
        const middle = points.reduce((sum, p) => [sum[0] + p[0] / points.length, sum[1] + p[1] / points.length], [0, 0]);
        const label = svgElement("text", { x: at(middle)[0], y: at(middle)[1], "font-size": radius * 2.2 }, group);
        label.textContent = name + (zone.mode === "liftable" ? " (liftable)" : "");
        if (name !== selected) continue;
        points.forEach((point, index) => {
          const [x, y] = at(point);
          svgElement("circle", { class: "handle", cx: x, cy: y, r: radius, tabindex: 0, role: "button",
            "data-zone": name, "data-point": index,
            "aria-label": name + ", corner " + (index + 1) + " of " + points.length + " at " + point[0] + ", " + point[1]
              + ": drag it or use the arrow keys; Delete removes it, Insert adds one after it" }, group);
        });
      }
      if (draft) {
        const group = svgElement("g", { class: "zone draft" }, svg);
        svgElement("polyline", { points: draft.map((p) => at(p).join(",")).join(" ") }, group);
        draft.forEach((point, index) => {
          svgElement("circle", { class: index === 0 ? "first" : "", cx: at(point)[0], cy: at(point)[1], r: radius * 0.8 }, group);
        });
      }
      svg.classList.toggle("drawing", draft !== null);
      button("finish").disabled = !draft || draft.length < 3;
      button("cancel").disabled = !draft;
      button("draw").disabled = draft !== null;
      if (focus) {
        const handle = svg.querySelector('circle.handle[data-zone="' + CSS.escape(focus[0]) + '"][data-point="' + focus[1] + '"]');
        if (handle) handle.focus();
      }
    }

    function renderList() {
      list.replaceChildren();
      for (const [name, zone] of Object.entries(zones)) {
        const item = htmlElement("li", { className: "zone-item" + (name === selected ? " selected" : "") }, list);
        item.dataset.field = "zones." + name; // the server's errors about this zone are shown here
        item.dataset.zone = name;
        const labelled = (text, control) => {
          const label = htmlElement("label", {}, item);
          label.append(text + " ", control);
          return control;
        };
        labelled("name", htmlElement("input", { className: "zone-name", value: name, size: 14, spellcheck: false,
          autocomplete: "off" }));
        const method = labelled("method", htmlElement("select", { className: "zone-method" }));
        for (const m of methods) htmlElement("option", { value: m, textContent: m, selected: (zone.method || "solid") === m }, method);
        const mode = labelled("mode", htmlElement("select", { className: "zone-mode" }));
        for (const m of modes) htmlElement("option", { value: m, textContent: m, selected: (zone.mode || "permanent") === m }, mode);
        const colour = labelled("colour", htmlElement("input", { className: "zone-color", type: "color",
          value: toHex(Array.isArray(zone.color) ? zone.color : [0, 0, 0]) }));
        colour.disabled = (zone.method || "solid") !== "solid";
        htmlElement("span", { className: "zone-points", textContent: corners(zone).length + " corners" }, item);
        htmlElement("button", { type: "button", className: "zone-edit", textContent: "Edit corners" }, item);
        htmlElement("button", { type: "button", className: "zone-delete", textContent: "Delete" }, item);
      }
      if (!list.children.length) htmlElement("li", { className: "zone-none", textContent: "No zones in this version." }, list);
    }

    function changed(focus) { writeField(); render(focus); }

    function freeName() {
      let n = 1;
      while (zones["zone-" + n]) n += 1;
      return "zone-" + n;
    }

    function add(polygon, how) {
      const name = freeName();
      zones[name] = { polygon, method: "solid", mode: "permanent" };
      selected = name;
      changed();
      say("Zone " + name + " " + how + ": name it and pick its method and mode below, then save the version.");
      const input = list.querySelector('[data-zone="' + CSS.escape(name) + '"] .zone-name');
      if (input && how !== "drawn") input.focus();
    }

    function startDrawing() {
      draft = [];
      selected = null;
      render();
      svg.focus();
      say("Drawing: click the zone's corners on the picture; click the first one again (or press Enter) to finish, Escape to cancel.");
    }

    function finishDrawing() {
      if (!draft || draft.length < 3) { say("A zone needs at least 3 corners."); return; }
      const polygon = draft;
      draft = null;
      add(polygon, "drawn");
    }

    function cancelDrawing() {
      if (!draft) return;
      draft = null;
      render();
      say("Drawing cancelled.");
    }

    function pointAt(event) {
      const box = svg.getBoundingClientRect();
      return [round((event.clientX - box.left) / box.width), round((event.clientY - box.top) / box.height)];
    }

    function nearFirst(event) {
      const box = svg.getBoundingClientRect();
      const first = draft[0];
      const dx = event.clientX - (box.left + first[0] * box.width);
      const dy = event.clientY - (box.top + first[1] * box.height);
      return Math.hypot(dx, dy) <= 12;
    }

    svg.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      const target = event.target;
      if (target.classList && target.classList.contains("handle")) {
        drag = { name: target.dataset.zone, index: Number(target.dataset.point) };
        svg.setPointerCapture(event.pointerId);
        event.preventDefault();
        return;
      }
      if (draft) {
        if (draft.length >= 3 && nearFirst(event)) finishDrawing();
        else { draft.push(pointAt(event)); render(); }
        event.preventDefault();
        return;
      }
      const group = target.closest && target.closest("g[data-zone]");
      selected = group ? group.dataset.zone : null;
      render();
    });
    svg.addEventListener("pointermove", (event) => {
      if (!drag || !zones[drag.name]) return;
      zones[drag.name].polygon[drag.index] = pointAt(event);
      renderOverlay();
    });
    const drop = () => {
      if (!drag) return;
      const { name, index } = drag;
      drag = null;
      changed([name, index]);
    };
    svg.addEventListener("pointerup", drop);
    svg.addEventListener("pointercancel", drop);

    svg.addEventListener("keydown", (event) => {
      if (draft && event.key === "Enter") { event.preventDefault(); finishDrawing(); return; }
      const handle = event.target.closest && event.target.closest("circle.handle");
      if (!handle) return;
      const name = handle.dataset.zone;
      const index = Number(handle.dataset.point);
      const polygon = zones[name] && zones[name].polygon;
      if (!polygon) return;
      const step = event.shiftKey ? 0.02 : 0.002;
      const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
      let focus = [name, index];
      if (moves[event.key]) {
        polygon[index] = [round(polygon[index][0] + moves[event.key][0]), round(polygon[index][1] + moves[event.key][1])];
      } else if ((event.key === "Delete" || event.key === "Backspace") && polygon.length > 3) {
        polygon.splice(index, 1);
        focus = [name, Math.min(index, polygon.length - 1)];
      } else if (event.key === "Insert") {
        const next = polygon[(index + 1) % polygon.length];
        polygon.splice(index + 1, 0, [round((polygon[index][0] + next[0]) / 2), round((polygon[index][1] + next[1]) / 2)]);
        focus = [name, index + 1];
      } else {
        return;
      }
      event.preventDefault();
      changed(focus);
    });

    // Escape cancels the zone being drawn wherever the focus is
    const onKey = (event) => { if (event.key === "Escape" && draft) { event.preventDefault(); cancelDrawing(); } };
    document.addEventListener("keydown", onKey);

    list.addEventListener("change", (event) => {
      const item = event.target.closest("[data-zone]");
      if (!item) return;
      const name = item.dataset.zone;
      const zone = zones[name];
      if (!zone) return;
      const target = event.target;
      if (target.classList.contains("zone-name")) {
        const wanted = target.value.trim();
        if (wanted === name) return;
        if (!NAME.test(wanted)) { say("A zone's name is 1 to 32 of a-z, 0-9 and -, starting with a letter or digit."); target.value = name; return; }
        if (zones[wanted]) { say("There is a zone called " + wanted + " already."); target.value = name; return; }
        zones = Object.fromEntries(Object.entries(zones).map(([key, value]) => [key === name ? wanted : key, value]));
        if (selected === name) selected = wanted;
        changed();
        const input = list.querySelector('[data-zone="' + CSS.escape(wanted) + '"] .zone-name');
        if (input) input.focus();
        return;
      }
      if (target.classList.contains("zone-method")) zone.method = target.value;
      else if (target.classList.contains("zone-mode")) zone.mode = target.value;
      else if (target.classList.contains("zone-color")) zone.color = fromHex(target.value);
      else return;
      changed();
      const again = list.querySelector('[data-zone="' + CSS.escape(name) + '"] .' + target.classList[0]);
      if (again) again.focus();
    });
    list.addEventListener("keydown", (event) => {
      // Enter in a zone's fields applies it, it does not submit the policy form
      if (event.key === "Enter" && event.target.matches("input")) {
        event.preventDefault();
        event.target.dispatchEvent(new Event("change", { bubbles: true }));
      }
    });
    list.addEventListener("click", (event) => {
      const item = event.target.closest("[data-zone]");
      if (!item) return;
      const name = item.dataset.zone;
      if (event.target.classList.contains("zone-edit")) {
        selected = name;
        render([name, 0]);
      } else if (event.target.classList.contains("zone-delete")) {
        delete zones[name];
        if (selected === name) selected = null;
        changed();
        say("Zone " + name + " deleted from this version (save it to keep the change).");
        button("draw").focus();
      }
    });

    field.addEventListener("input", () => { if (readField()) render(); });
    button("draw").addEventListener("click", startDrawing);
    button("finish").addEventListener("click", finishDrawing);
    button("cancel").addEventListener("click", cancelDrawing);
    button("square").addEventListener("click", () => add([[0.4, 0.4], [0.6, 0.4], [0.6, 0.6], [0.4, 0.6]], "added as a square in the middle"));
    button("refresh").addEventListener("click", () => loadPicture());

    async function loadPicture() {
      clearTimeout(retry);
      const held = editor.dataset.held === "yes";
      let response;
      try {
        response = await fetch("/api/cameras/" + encodeURIComponent(camera) + "/snapshot" + (held ? "?held=1" : ""),
                               { headers: gatewayAuth, cache: "no-store" });
      } catch (error) {
        caption.textContent = "The picture could not be loaded: " + error.message;
        return;
      }
      if (ended) return;
      if (!held) retry = setTimeout(loadPicture, REFRESH);  // the released picture follows the camera
      if (response.status === 503) {
        caption.textContent = camera + " has released no frame yet; trying again…";
        clearTimeout(retry);
        retry = setTimeout(loadPicture, 2000);
        return;
      }
      if (!response.ok) {
        let message = "refused (" + response.status + ")";
        try { message = (await response.json()).error || message; } catch (error) { /* not JSON */ }
        caption.textContent = "The picture could not be loaded: " + message;
        return;
      }
      const state = response.headers.get("X-Frame-State");
      const blob = await response.blob();
      if (ended) return;
      if (objectUrl) URL.revokeObjectURL(objectUrl);
      objectUrl = URL.createObjectURL(blob);
      img.addEventListener("load", () => {
        if (size[0] !== img.naturalWidth || size[1] !== img.naturalHeight || !editor.classList.contains("ready")) {
          size = [img.naturalWidth, img.naturalHeight];
          renderOverlay();  // not the list: the officer may be typing in it
        }
        editor.classList.add("ready");
        const when = new Date().toLocaleTimeString();
        caption.textContent = state === "held"
          ? "The newest frame of " + camera + " that was redacted but withheld (" + when + "): is each zone still over what it hides?"
          : state === "blanked"
            ? "The newest frame " + camera + " released was blank (" + when + "): the detector may be warming up; try “New picture”."
            : "The newest frame " + camera + " released, redacted (" + when + ").";
      }, { once: true });
      img.src = objectUrl;
    }

    readField();
    render();
    loadPicture();
    const video = editor.querySelector("#zone-live");
    const stopLive = typeof consoleWhep !== "undefined" ? consoleWhep.watch(camera, video) : () => {};
    return () => {
      ended = true;
      clearTimeout(retry);
      stopLive();
      document.removeEventListener("keydown", onKey);
      if (objectUrl) URL.revokeObjectURL(objectUrl);
    };
  }

  return { attach };
})();
