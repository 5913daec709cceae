// Small behaviours htmx does not cover, without inline script (our CSP forbids it).
document.addEventListener("click", (event) => {
  const remove = event.target.closest("[data-remove-row]");
  if (remove) {
    remove.closest("tr").remove();
    return;
  }
  const replace = event.target.closest("[data-replace-secret]");
  if (replace) {
    const input = document.getElementById(replace.dataset.replaceSecret);
    replace.previousElementSibling?.remove(); // the mask
    replace.remove();
    input.classList.remove("hidden");
    input.focus();
  }
});

// A secret value is typed into a password field.
document.addEventListener("change", (event) => {
  const toggle = event.target.closest("[data-secret-toggle]");
  if (toggle) {
    const input = document.getElementById(toggle.dataset.secretToggle);
    if (input) input.type = toggle.checked ? "password" : "text";
  }
});
