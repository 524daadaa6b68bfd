// bankgate console: progressive enhancement only (every form works without it). Loaded from 'self'; no inline code.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Copy buttons: <button data-copy="ID"> copies the text of the element with that id.
  for (const button of document.querySelectorAll("button[data-copy]")) {
    const source = document.getElementById(button.dataset.copy);
    if (!source || !navigator.clipboard) continue;
    button.hidden = false;
    button.addEventListener("click", async () => {
      await navigator.clipboard.writeText(source.innerText.trim());
      button.textContent = "Copied";
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    });
  }
  // Password hints while typing, from the numbers the server's rules use (data-* on the field); the server checks.
  const field = document.getElementById("new-password");
  const confirm = document.getElementById("confirm-password");
  const hint = document.getElementById("strength-hint");
  if (!field || !hint) return;
  const n = (name) => Number(field.dataset[name]);
  const show = () => {
    const value = field.value;
    if (!value) { hint.hidden = true; return; }
    const classes = [/[a-z]/, /[A-Z]/, /[0-9]/, /[^A-Za-z0-9]/].filter((re) => re.test(value)).length;
    const distinct = new Set(value).size;
    let message = "Strong enough by length and mix; the server checks the rest.";
    let ok = true;
    if (distinct < n("minDistinct")) {
      message = `Use at least ${n("minDistinct")} different characters.`; ok = false;
    } else if (!(value.length >= n("passphraseLength") || (value.length >= n("minLength") && classes >= n("minClasses")))) {
      message = value.length < n("minLength")
        ? `${value.length} characters: at least ${n("minLength")} (or ${n("passphraseLength")} for a passphrase).`
        : `Mix ${n("minClasses")} of lower case, upper case, digits and symbols, or use ${n("passphraseLength")} characters.`;
      ok = false;
    } else if (confirm && confirm.value && confirm.value !== value) {
      message = "The two passwords differ."; ok = false;
    }
    hint.textContent = message;
    hint.className = "hint " + (ok ? "ok" : "bad");
    hint.hidden = false;
  };
  field.addEventListener("input", show);
  if (confirm) confirm.addEventListener("input", show);
});
