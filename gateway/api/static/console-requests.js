"use strict";
// Unmask requests: download the request file (fetched with the token, saved from a blob URL), and
// upload an approved one, chosen as a file or pasted (the form PUTs the text as it is).
consolePages.requests = (main) => {
  const section = main.querySelector("#request");
  if (!section) return;
  const link = main.querySelector("#request-link");
  let url = null;
  main.querySelector("#download-request")?.addEventListener("click", async () => {
    const answer = await fetch("/api/unmask-requests/" + encodeURIComponent(section.dataset.id) + "/file",
      { headers: gatewayAuth });
    if (!answer.ok) { link.hidden = false; link.removeAttribute("href"); link.textContent = "refused (" + answer.status + ")"; return; }
    if (url) URL.revokeObjectURL(url);
    url = URL.createObjectURL(await answer.blob());
    link.href = url;
    link.download = section.dataset.file;
    link.textContent = section.dataset.file;
    link.hidden = false;
    link.click();
  });
  const file = main.querySelector("#approved-file");
  file?.addEventListener("change", async () => {
    if (file.files.length) main.querySelector("#approved-text").value = await file.files[0].text();
  });
  main.addEventListener("console-leave", () => { if (url) URL.revokeObjectURL(url); }, { once: true });
};
