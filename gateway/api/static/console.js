"use strict";
// The console shell: loads each page's HTML (/console/part/<page>, rendered by the gateway for this
// token) into <main>, and turns the page's forms and buttons into calls to the /api resources.
//   <form data-api="/api/policies" data-method="POST" data-then="reload">  fields named by dotted path
//     (name="classes.face.method"); data-type="number|bool|json|lines" converts a field's value;
//     checkboxes sharing a name with data-type="list" give the list of the ticked ones' values
//     (left out when none is ticked and they are marked data-omit-empty);
//     a 422 answer's errors ("path: message") are shown beside the field whose data-field is that path.
//   <button data-api="/api/tokens/ID" data-method="DELETE" data-confirm="Revoke?" data-then="reload">
// Pages add behaviour with consolePages[page] = (main) => {...} (their own scripts, loaded below).
const consolePages = {};
const gatewayConsole = (() => {
  const main = document.getElementById("main");
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  const signin = document.getElementById("signin");
  let current = null;

  const pageOf = (path) => (path.match(/^\/console\/([a-z-]+)/) || [null, "cameras"])[1];

  function status(text, kind) {
    main.replaceChildren(Object.assign(document.createElement("p"), { className: "status " + (kind || ""), textContent: text }));
  }

  async function api(method, url, body, type) {
    const headers = { ...gatewayAuth };
    if (body !== undefined) headers["Content-Type"] = type || "application/json";
    const response = await fetch(url, { method, headers, body: body === undefined ? undefined : body });
    const text = await response.text();
    let data = text;
    try { data = JSON.parse(text); } catch (error) { /* text or HTML */ }
    return { status: response.status, ok: response.ok, data, text };
  }

  // show ``page`` (``href``: its URL with a query, pushed onto the history)
  async function load(page, href) {
    if (!gatewayToken) { status("Not signed in."); signin.hidden = false; return; }
    if (href) history.pushState(null, "", href);
    main.dispatchEvent(new CustomEvent("console-leave"));  // a page's live previews end
    current = page;
    const answer = await api("GET", "/console/part/" + page + location.search);
    if (!answer.ok) {
      status((answer.data && answer.data.error) || ("refused (" + answer.status + ")"), "error");
      if (answer.status === 401) signin.hidden = false;
      return;
    }
    main.innerHTML = answer.text;  // rendered (autoescaped) by the gateway for this token
    const navTemplate = main.querySelector("#page-nav");
    if (navTemplate) nav.replaceChildren(navTemplate.content.cloneNode(true));
    const whoTemplate = main.querySelector("#page-who");
    if (whoTemplate) who.textContent = whoTemplate.content.textContent;
    document.title = (main.querySelector("h1") || { textContent: page }).textContent + " · privacy-gateway";
    if (consolePages[page]) consolePages[page](main);
    (main.querySelector("[data-focus]") || main).focus();  // a page may point keyboard users somewhere
  }

  function setPath(target, path, value) {
    const keys = path.split(".");
    let at = target;
    keys.slice(0, -1).forEach((key) => { at = at[key] = at[key] || {}; });
    at[keys[keys.length - 1]] = value;
  }

  function valueOf(field) {
    const type = field.dataset.type;
    if (field.type === "checkbox") return field.checked;
    if (type === "number") return field.value === "" ? null : Number(field.value);
    if (type === "json") return field.value.trim() === "" ? null : JSON.parse(field.value);
    if (type === "lines") return field.value.split(/[\n,]/).map((s) => s.trim()).filter(Boolean);
    if (type === "optional") return field.value === "" ? null : field.value;
    return field.value;
  }

  // the form's fields as a JSON document: dotted names nest; a field whose value is "" and marked
  // data-omit-empty is left out (the server's default applies)
  function documentOf(form) {
    const doc = {};
    const lists = new Map();  // name -> {values, omit}: ticked checkboxes of data-type="list"
    for (const field of form.querySelectorAll("[name]")) {
      if (field.disabled) continue;
      if (field.type === "checkbox" && field.dataset.type === "list") {
        if (!lists.has(field.name)) lists.set(field.name, { values: [], omit: field.dataset.omitEmpty !== undefined });
        if (field.checked) lists.get(field.name).values.push(field.value);
        continue;
      }
      if (field.dataset.omitEmpty !== undefined && field.value === "") continue;
      let value;
      try { value = valueOf(field); } catch (error) {
        throw new Error(field.name + ": not valid JSON (" + error.message + ")");
      }
      setPath(doc, field.name, value);
    }
    for (const [name, list] of lists) if (list.values.length || !list.omit) setPath(doc, name, list.values);
    return doc;
  }

  function clearErrors(scope) {
    scope.querySelectorAll(".field-error").forEach((e) => e.remove());
    scope.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
  }

  // "classes.face.method: Input should be ..." beside the field named classes.face.method (or its
  // nearest named ancestor path); anything not placed goes to the form's result line
  function showErrors(scope, errors, result) {
    const unplaced = [];
    for (const line of errors) {
      const path = line.split(": ")[0];
      const message = line.slice(path.length + 2) || line;
      let target = null;
      for (let p = path; p && !target; p = p.includes(".") ? p.slice(0, p.lastIndexOf(".")) : "") {
        target = scope.querySelector('[data-field="' + CSS.escape(p) + '"]');
      }
      if (!target) { unplaced.push(line); continue; }
      const note = Object.assign(document.createElement("span"), { className: "field-error", textContent: message });
      note.setAttribute("role", "alert");
      target.setAttribute("aria-invalid", "true");
      target.append(note);
    }
    if (result) result.textContent = unplaced.join("; ");
  }

  async function act(element, body) {
    const result = element.querySelector(".result") || element.parentElement.querySelector(".result");
    if (element.dataset.confirm && !confirm(element.dataset.confirm)) return;
    clearErrors(element.closest("form") || element);
    if (result) { result.textContent = "…"; result.className = "result"; }
    const answer = await api(element.dataset.method || "POST", element.dataset.api, body);
    if (!answer.ok) {
      const message = (answer.data && answer.data.error) || ("refused (" + answer.status + ")");
      if (result) { result.textContent = message; result.className = "result error"; }
      if (answer.data && answer.data.errors) showErrors(element.closest("form") || main, answer.data.errors, null);
      return answer;
    }
    if (result) { result.textContent = element.dataset.done || "done"; result.className = "result ok"; }
    element.dispatchEvent(new CustomEvent("api-done", { bubbles: true, detail: answer }));
    if (element.dataset.then === "reload") await load(current);
    else if (element.dataset.then) await goto(element.dataset.then, answer.data);
    return answer;
  }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.id === "signin") {
      event.preventDefault();
      sessionStorage.setItem("privacy-gateway-token", document.getElementById("token").value.trim());
      location.reload();
      return;
    }
    if (!form.dataset.api) return;
    event.preventDefault();
    let body;
    try {
      body = form.dataset.raw !== undefined ? form.querySelector("[data-raw-body]").value : JSON.stringify(documentOf(form));
    } catch (error) {
      const result = form.querySelector(".result");
      if (result) { result.textContent = error.message; result.className = "result error"; }
      return;
    }
    act(form, body);
  });

  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[data-page]");
    if (link && !event.ctrlKey && !event.metaKey) {
      event.preventDefault();
      load(link.dataset.page, link.href);
      return;
    }
    const button = event.target.closest("button[data-api]");
    if (button && !button.form?.dataset.api) {
      event.preventDefault();
      act(button, button.dataset.body);
    }
  });

  // data-then="/console/policies?version={version}": go there, {key}s filled from the answer
  function goto(template, data) {
    const href = template.replace(/\{(\w+)\}/g, (_, key) => encodeURIComponent((data && data[key]) ?? ""));
    return load(pageOf(new URL(href, location.href).pathname), href);
  }

  window.addEventListener("popstate", () => load(pageOf(location.pathname)));
  // the pages' scripts come after this one: start once they have all run
  document.addEventListener("DOMContentLoaded", () => {
    load(pageOf(location.pathname)).catch((error) => status("error: " + error, "error"));
  });
  return { api, load, goto, documentOf, showErrors, clearErrors, reload: () => load(current) };
})();
