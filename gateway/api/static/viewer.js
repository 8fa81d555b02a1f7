"use strict";
// One camera over WHEP: offer to receive video, show it, retry while the camera has no frame yet.
// In a cluster it follows the camera: an offer redirected to another node reloads the page there,
// the token carried on in the fragment; when the gateway ends its session it offers again a second later.
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

  const ended = "ended by the gateway (access revoked, or the session closed)";

  // ``again``: offered after the gateway ended the session; a refusal then keeps saying so
  async function start(again = false) {
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
    if (response.type === "opaqueredirect") {  // another node of a cluster runs the camera: this page, reloaded,
      pc.close();                               // is redirected there, the token in the fragment (which the
      show("moving to the node that runs the camera");  // redirect keeps, and no server sees): the token is
      if (gatewayToken) {                       // kept per origin, so the other node's page needs it this way
        const fragment = "#token=" + encodeURIComponent(gatewayToken);
        history.replaceState(null, "", location.pathname + location.search + fragment);
      }
      location.reload();
      return;
    }
    if (response.status === 503) {  // the camera has no frame yet, or runs on no node yet: try again shortly
      pc.close();
      show("waiting for the camera");
      setTimeout(() => start(again).catch((error) => show("error: " + error)), 1000);
      return;
    }
    if (response.status !== 201) {
      const text = (await response.text()).trim();
      show(again ? ended : "refused (" + response.status + "): " + text);
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
      if ((dtls.state === "closed" || dtls.state === "failed") && pc.connectionState !== "closed") {
        pc.close();
        show(ended);
        // the camera may have moved to another node (or been edited): offer once more, which a
        // redirect or a new session answers; a revoked token's refusal leaves this message
        setTimeout(() => start(true).catch((error) => show("error: " + error)), 1000);
      }
    });
    window.addEventListener("pagehide", () => {
      fetch(session.location, { method: "DELETE", headers: gatewayAuth, keepalive: true });
      pc.close();
    });
  }

  start().catch((error) => show("error: " + error));
})();
