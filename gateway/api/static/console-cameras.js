"use strict";
// The camera grid: a WHEP preview per camera, and its counters as rates (per second) from /api/cameras.
// The add, edit and remove forms need nothing here: console.js sends them to /api/cameras.
const consoleWhep = (() => {
  function gathered(pc) {
    return new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") return resolve();
      const timer = setTimeout(resolve, 2000);
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
      });
    });
  }
  // watch ``camera`` in ``video``; returns a function that ends the session
  function watch(camera, video, onState) {
    let pc = null, where = null, ended = false;
    async function start() {
      pc = new RTCPeerConnection();
      pc.addTransceiver("video", { direction: "recvonly" });
      pc.addEventListener("track", (event) => { video.srcObject = event.streams[0] || new MediaStream([event.track]); });
      pc.addEventListener("connectionstatechange", () => onState && onState(pc.connectionState));
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      const response = await fetch("/whep/" + encodeURIComponent(camera), {
        method: "POST", headers: { "Content-Type": "application/sdp", ...gatewayAuth }, body: pc.localDescription.sdp });
      if (response.status === 503 && !ended) { pc.close(); setTimeout(start, 1000); return; }
      if (response.status !== 201) { onState && onState("refused (" + response.status + ")"); pc.close(); return; }
      where = new URL(response.headers.get("Location"), location.href).href;
      await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
    }
    start().catch((error) => onState && onState("error: " + error));
    return () => {
      ended = true;
      if (where) fetch(where, { method: "DELETE", headers: gatewayAuth, keepalive: true });
      if (pc) pc.close();
    };
  }
  return { watch };
})();

consolePages.cameras = (main) => {
  const stops = [];
  let last = null, left = false;
  for (const tile of main.querySelectorAll(".tile[data-camera]")) {
    const video = tile.querySelector("video");  // none: the camera runs on another node of the cluster
    if (video) stops.push(consoleWhep.watch(tile.dataset.camera, video));
  }
  async function poll() {
    if (left || !document.body.contains(main.querySelector("#camera-grid"))) return;
    const answer = await gatewayConsole.api("GET", "/api/cameras");
    if (answer.ok) {
      const now = performance.now() / 1000;
      for (const camera of answer.data.cameras) {
        const tile = main.querySelector('.tile[data-camera="' + CSS.escape(camera.id) + '"]');
        if (!tile) continue;
        const here = camera.runs_at === undefined;  // in a cluster, a camera elsewhere has its counters there
        const before = here && last && last.cameras[camera.id];
        const rate = (key) => before ? ((camera[key] - before[key]) / (now - last.at)).toFixed(1) + "/s" : "…";
        const set = (key, text) => { const el = tile.querySelector('[data-stat="' + key + '"]'); if (el) el.textContent = text; };
        if (here) {
          set("released", rate("released"));
          set("blanked", rate("blanked"));
          set("dropped", rate("dropped"));
          const runs = before ? camera.detections - before.detections : 0;
          set("detect", runs > 0 ? ((camera.detect_seconds - before.detect_seconds) / runs * 1000).toFixed(0) + " ms" : "…");
        }
        set("status", camera.status);
        tile.querySelector('[data-stat="status"]').className = "badge " + camera.status;
        set("reasons", camera.reasons.join("; ") || "–");
        const banner = tile.querySelector(".banner[data-held]");  // a moved view: blanked until confirmed
        if (banner && camera.view) {
          banner.hidden = !camera.view.held;
          if (camera.view.held) {
            set("held-reason", camera.view.held.reason);
            set("held-since", camera.view.held.since);
          }
        }
      }
      last = { at: now, cameras: Object.fromEntries(answer.data.cameras.map((c) => [c.id, c])) };
    }
    setTimeout(poll, 2000);
  }
  poll();
  // leaving (another page, or this one reloaded after an add, edit or removal) ends the previews and the polling
  const leave = () => { left = true; stops.forEach((stop) => stop()); };
  window.addEventListener("popstate", leave, { once: true });
  main.addEventListener("console-leave", leave, { once: true });
};
