"use strict";
// One camera over WHEP: offer to receive video, show it, retry while the camera has no frame yet.
(() => {
  const video = document.getElementById("video");
  const status = document.getElementById("status");
  const camera = decodeURIComponent(location.pathname.split("/").pop());
  const endpoint = location.pathname.replace(/\/view\/([^/]+)$/, "/whep/$1") + location.search;
  document.title = camera;
  const show = (text) => { status.textContent = camera + ": " + text; };

  function iceGathered(pc) {
    return new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") return resolve();
      const timer = setTimeout(resolve, 2000);
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
      });
    });
  }

  async function start() {
    const pc = new RTCPeerConnection();
    const session = { pc, location: null };
    window.whepSession = session;
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addEventListener("track", (event) => {
      video.srcObject = event.streams[0] || new MediaStream([event.track]);
    });
    pc.addEventListener("connectionstatechange", () => show(pc.connectionState));
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc);
    const response = await fetch(endpoint, {
      method: "POST", headers: { "Content-Type": "application/sdp", ...gatewayAuth }, body: pc.localDescription.sdp,
      redirect: "manual",
    });
    if (response.type === "opaqueredirect") {  // another node of a cluster runs the camera: its page, reloaded,
      pc.close();                               // is redirected there (the token goes along in the fragment)
      show("moving to the node that runs the camera");
      location.reload();
      return;
    }
    if (response.status === 503) {  // the camera has no frame yet: try again shortly
      pc.close();
      show("waiting for the camera");
      setTimeout(() => start().catch((error) => show("error: " + error)), 1000);
      return;
    }
    if (response.status !== 201) {
      show("refused (" + response.status + "): " + (await response.text()).trim());
      pc.close();
      return;
    }
    session.location = new URL(response.headers.get("Location"), location.href).href;
    await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
    // the gateway ends a session (its token revoked, its grant taken away) by closing it, DTLS
    // close_notify first; Chromium keeps the connection "connected" until ICE consent fails seconds
    // later, so the page ends it at once
    const dtls = pc.getReceivers()[0] && pc.getReceivers()[0].transport;
    dtls?.addEventListener("statechange", () => {
      if (dtls.state === "closed" || dtls.state === "failed") {
        pc.close();
        show("ended by the gateway (access revoked, or the session closed)");
      }
    });
    window.addEventListener("pagehide", () => {
      fetch(session.location, { method: "DELETE", headers: gatewayAuth, keepalive: true });
      pc.close();
    });
  }

  start().catch((error) => show("error: " + error));
})();
