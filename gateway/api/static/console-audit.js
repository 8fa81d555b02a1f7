"use strict";
// The audit filters: submitted as the page's query, without leaving the console.
consolePages.audit = (main) => {
  const form = main.querySelector("#audit-filter");
  form?.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams([...new FormData(form)].filter(([, value]) => value !== ""));
    gatewayConsole.goto("/console/audit" + (query.toString() ? "?" + query : ""));
  });
};
