"use strict";
// Recordings: the filters go into the page's query; a chosen recording shows one redacted frame at a
// time on a canvas (decoded by the gateway: /frame?at=), with the sealed regions of that frame
// outlined (/subjects?at=). A click on one marks it (the gateway says which class and track the
// pixel is on); the list of the recording's subjects does the same from the keyboard. The request
// form then carries the subject, and the point marked, to POST /api/unmask-requests.
consolePages.recordings = (main) => {
  const filter = main.querySelector("#recordings-filter");
  filter?.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams([...new FormData(filter)].filter(([, value]) => value !== ""));
    gatewayConsole.goto("/console/recordings?" + query);
  });
  const section = main.querySelector("#recording");
  const form = main.querySelector("#request-form");
  if (!section || !form) return;

  const base = "/api/cameras/" + encodeURIComponent(section.dataset.camera) + "/recordings/" +
    encodeURIComponent(section.dataset.recording);
  const canvas = main.querySelector("#frame");
  const context = canvas.getContext("2d");
  const line = main.querySelector("#frame-status");
  const slider = main.querySelector("#frame-time");
  const seconds = main.querySelector("#frame-seconds");
  const list = main.querySelector("#subject-list");
  const shown = main.querySelector("#subject-shown");
  let image = null, url = null, frameTime = 0, regions = [], marked = null, asked = 0;

  const field = (id, value) => { form.querySelector("#" + id).value = value === null || value === undefined ? "" : String(value); };

  function draw() {
    if (!image) return;
    canvas.width = image.naturalWidth;
    canvas.height = image.naturalHeight;
    context.drawImage(image, 0, 0);
    const width = Math.max(2, Math.round(canvas.width / 320));
    context.lineWidth = width;
    context.setLineDash([3 * width, 2 * width]);
    context.strokeStyle = "rgba(255, 255, 255, 0.85)";
    for (const region of regions) context.strokeRect(...region.box);
    const box = marked && regions.find((r) => r.class === marked.cls && r.track === marked.track);
    if (box) {
      context.setLineDash([]);
      context.lineWidth = 2 * width;
      context.strokeStyle = "#ffcc00";
      context.strokeRect(...box.box);
      context.font = Math.max(14, Math.round(canvas.width / 60)) + "px system-ui, sans-serif";
      context.fillStyle = "#ffcc00";
      context.fillText(marked.cls + " " + marked.track, box.box[0], Math.max(16, box.box[1] - 6));
    }
  }

  async function show(at) {
    const mine = ++asked;  // a later request wins
    line.textContent = "Loading the frame…";
    const response = await fetch(base + "/frame?at=" + Math.max(0, at).toFixed(3), { headers: gatewayAuth });
    if (mine !== asked) return;
    if (!response.ok) {
      let message = "refused (" + response.status + ")";
      try { message = (await response.json()).error || message; } catch (error) { /* not JSON */ }
      line.textContent = message;
      return;
    }
    const time = Number(response.headers.get("X-Frame-Time"));
    const blob = await response.blob();
    const next = new Image();
    const nextUrl = URL.createObjectURL(blob);
    next.src = nextUrl;
    await next.decode();
    const answer = await gatewayConsole.api("GET", base + "/subjects?at=" + time.toFixed(6));
    if (mine !== asked) { URL.revokeObjectURL(nextUrl); return; }
    if (url) URL.revokeObjectURL(url);
    image = next; url = nextUrl; frameTime = time;
    // outline only what was sealed on this very frame (the nearest sealed one may be another)
    regions = answer.ok && Math.abs(answer.data.at - time) < 0.02 ? answer.data.regions : [];
    slider.value = time;
    seconds.value = time.toFixed(2);
    canvas.dataset.at = time.toFixed(6);
    draw();
    line.textContent = "The frame at " + time.toFixed(2) + " s: " + (regions.length ?
      regions.length + " redacted subject" + (regions.length === 1 ? "" : "s") + " (outlined); click one to mark it." :
      "nothing redacted on it.");
  }

  function mark(cls, track, point) {
    marked = { cls, track };
    field("subject-class", cls);
    field("subject-track", track);
    field("point-at", point ? point.at : null);
    field("point-x", point ? point.x : null);
    field("point-y", point ? point.y : null);
    list.value = cls + " " + track;
    shown.textContent = cls + " track " + track + (point ? " (marked at " + point.x + ", " + point.y + " on the frame at " +
      point.at.toFixed(2) + " s)" : "");
    draw();
  }

  canvas.addEventListener("click", async (event) => {
    if (!image) return;
    const rect = canvas.getBoundingClientRect();
    const x = Math.min(canvas.width - 1, Math.floor((event.clientX - rect.left) * canvas.width / rect.width));
    const y = Math.min(canvas.height - 1, Math.floor((event.clientY - rect.top) * canvas.height / rect.height));
    const at = frameTime;
    const answer = await gatewayConsole.api("GET", base + "/subjects?at=" + at.toFixed(6) + "&x=" + x + "&y=" + y);
    if (!answer.ok) { line.textContent = (answer.data && answer.data.error) || "refused (" + answer.status + ")"; return; }
    const hits = answer.data.regions;
    if (hits.length === 0) { line.textContent = "Nothing redacted at (" + x + ", " + y + "): click inside an outlined subject."; return; }
    if (hits.length > 1) {
      line.textContent = "Several subjects overlap there (" + hits.map((h) => h.class + " " + h.track).join(", ") +
        "): choose one in the list.";
      return;
    }
    mark(hits[0].class, hits[0].track, { at, x, y });
    line.textContent = "Marked " + hits[0].class + " track " + hits[0].track + ".";
  });

  list.addEventListener("change", () => {
    if (!list.value) {
      marked = null;
      ["subject-class", "subject-track", "point-at", "point-x", "point-y"].forEach((id) => field(id, null));
      shown.textContent = "none marked yet: click one on the frame, or choose it in the list";
      draw();
      return;
    }
    const [cls, track] = list.value.split(" ");
    mark(cls, Number(track), null);
    const first = Number(list.selectedOptions[0].dataset.first);
    if (!regions.some((r) => r.class === cls && r.track === Number(track))) show(first);  // show it where it appears
  });

  slider.addEventListener("input", () => { seconds.value = Number(slider.value).toFixed(2); });
  slider.addEventListener("change", () => show(Number(slider.value)));
  main.querySelector("#show-frame").addEventListener("click", () => show(Number(seconds.value) || 0));
  seconds.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); show(Number(seconds.value) || 0); }
  });
  main.addEventListener("console-leave", () => { if (url) URL.revokeObjectURL(url); }, { once: true });
  // start where the first subject appears (the recording's first frames may hold nobody, or be blanked)
  const first = list.options.length > 1 ? Number(list.options[1].dataset.first) : 0;
  show(first).catch((error) => { line.textContent = "error: " + error; });
};
