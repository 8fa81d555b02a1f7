"use strict";
// People and access: what an action answered is shown above the page it reloads (the fingerprint
// of someone enrolled, what leaving did), and a token just minted is shown once, with its viewer URL.
const consolePeople = { notice: null, minted: null };

consolePages.people = (main) => {
  const box = main.querySelector("#people-notice");
  const line = (text, className) => Object.assign(document.createElement("p"), { textContent: text, className: className || "" });

  if (consolePeople.minted) {
    const token = consolePeople.minted;
    consolePeople.minted = null;
    const cameras = token.cameras;
    const view = location.origin + "/view" + (cameras && cameras.length === 1 ? "/" + encodeURIComponent(cameras[0]) : "")
      + "#token=" + token.token;
    const panel = Object.assign(document.createElement("section"), { id: "minted", className: "minted" });
    panel.setAttribute("aria-labelledby", "minted-title");
    const title = Object.assign(document.createElement("h2"), { id: "minted-title",
      textContent: "New token for " + token.identity + " (shown only now)" });
    const label = Object.assign(document.createElement("label"), { htmlFor: "minted-token", textContent: "Token" });
    const field = Object.assign(document.createElement("input"), { id: "minted-token", readOnly: true, value: token.token });
    field.setAttribute("autocomplete", "off");
    field.addEventListener("focus", () => field.select());
    const copy = Object.assign(document.createElement("button"), { type: "button", textContent: "Copy" });
    copy.addEventListener("click", async () => {
      field.select();
      try { await navigator.clipboard.writeText(token.token); copy.textContent = "Copied"; }
      catch (error) { copy.textContent = "Select and copy it"; }
    });
    const link = Object.assign(document.createElement("a"), { id: "minted-url", href: view, textContent: view, target: "_blank" });
    link.rel = "noreferrer";
    const where = cameras === null ? "every camera " + token.identity + " may use" : cameras.join(", ");
    panel.append(title, line("Give it to its holder now: the gateway keeps only its hash. Cameras: " + where
      + "; expires " + token.expires + "."), label, field, copy, line("Viewer URL (the token rides in the fragment, "
      + "which browsers never send to a server):"), link);
    box.replaceWith(panel);
    field.dataset.focus = "";  // the shell focuses it once the page is in place
  } else if (consolePeople.notice) {
    for (const [text, kind] of consolePeople.notice) box.append(line(text, kind));
    consolePeople.notice = null;
  }

  function done(event) {
    const element = event.target;
    const answer = event.detail.data || {};
    if (element.id === "mint-form") {
      consolePeople.minted = answer;
      gatewayConsole.reload();
    } else if (element.id === "enrol-form") {
      consolePeople.notice = [["Enrolled " + answer.name + " (" + answer.roles.join(", ") + "). Key fingerprint "
        + answer.fingerprint + ": compare it with the one their `keys public` printed, over another channel.", "ok"]];
    } else if (answer.messages) {
      consolePeople.notice = [[answer.identity + (answer.revoked ? ": keys revoked" : ": removed") + "; "
        + answer.tokens_revoked + " token(s) revoked. " + answer.messages.join(". "), "ok"],
        ...(answer.blanked || []).map((why) => ["Blanked until the roster meets its policy again: " + why, "error"])];
    } else if (element.dataset.api && element.dataset.api.startsWith("/api/tokens/")) {
      consolePeople.notice = [["Token " + answer.id.slice(0, 6) + "… of " + answer.identity
        + " revoked: its live sessions end within seconds.", "ok"]];
    } else if (element.classList.contains("grants")) {
      consolePeople.notice = [[answer.identity + " may now use: " + (answer.cameras.join(", ") || "no camera"), "ok"]];
    }
  }
  main.addEventListener("api-done", done);
  main.addEventListener("console-leave", () => main.removeEventListener("api-done", done), { once: true });
};
