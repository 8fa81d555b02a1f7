"use strict";
// The token comes in the URL fragment (#token=...), which browsers never send to a server;
// it is kept for this tab only and taken out of the address bar.
const gatewayToken = (() => {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    sessionStorage.setItem("privacy-gateway-token", fragment.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("privacy-gateway-token");
})();
const gatewayAuth = gatewayToken ? { Authorization: "Bearer " + gatewayToken } : {};
