"use strict";
// The cameras this token may watch (asked of /api/cameras with it), each linked to its viewer.
(() => {
  const list = document.getElementById("cameras"), status = document.getElementById("status");
  const form = document.getElementById("form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = "token=" + encodeURIComponent(document.getElementById("token").value.trim());
    location.reload();
  });
  if (!gatewayToken) { status.textContent = "A viewer token is needed."; form.hidden = false; return; }
  fetch("api/cameras", { headers: gatewayAuth }).then(async (response) => {
    if (!response.ok) {
      const answer = await response.json().catch(() => ({}));
      status.textContent = "refused (" + response.status + "): " + (answer.error || "");
      sessionStorage.removeItem("privacy-gateway-token");
      form.hidden = false;
      return;
    }
    const { cameras } = await response.json();
    for (const camera of cameras) {
      const item = document.createElement("li"), link = document.createElement("a");
      link.href = "view/" + encodeURIComponent(camera.id);
      link.textContent = camera.id;
      item.append(link);
      list.append(item);
    }
    if (!cameras.length) status.textContent = "This token grants no camera.";
  });
})();
