"use strict";
// The policy editor: switching camera reloads the page for it; "Check" validates without storing;
// the zones field gets the drawing editor (console-zones.js).
consolePages.policies = (main) => {
  const stopZones = consoleZones.attach(main);
  main.addEventListener("console-leave", stopZones, { once: true });
  const select = main.querySelector("#policy-camera");
  select?.addEventListener("change", () => gatewayConsole.goto("/console/policies?camera=" + encodeURIComponent(select.value)));
  const form = main.querySelector("#policy-form");
  main.querySelector("#validate")?.addEventListener("click", async () => {
    const result = form.querySelector(".result");
    gatewayConsole.clearErrors(form);
    let body;
    try { body = JSON.stringify(gatewayConsole.documentOf(form)); } catch (error) {
      result.textContent = error.message; result.className = "result error"; return;
    }
    const answer = await gatewayConsole.api("POST", "/api/policies/validate", body);
    if (answer.ok) { result.textContent = "valid"; result.className = "result ok"; return; }
    result.textContent = (answer.data && answer.data.error) || "refused (" + answer.status + ")";
    result.className = "result error";
    if (answer.data && answer.data.errors) gatewayConsole.showErrors(form, answer.data.errors, null);
  });
};
