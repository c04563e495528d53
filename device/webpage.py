"""The LED page the agent serves at `GET /`: one self-contained HTML document.

Inline CSS and JavaScript, no external assets (a Pi may have no route to a CDN). The
script polls `/api/led` every second to paint the strip's current colour, and its
controls POST `led` commands to `/api/led`, exactly as an operator's script would.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{device_id}} LEDs</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 2rem; background: #111; color: #eee; }
 h1 { font-size: 1.4rem; }
 #swatch { width: 8rem; height: 8rem; border-radius: 1rem; border: 2px solid #444; }
 #strip { display: flex; gap: 3px; margin: 1rem 0; }
 #strip div { width: 14px; height: 14px; border-radius: 50%; background: #000; }
 form, .quick { margin: 1rem 0; display: flex; gap: .6rem; flex-wrap: wrap; align-items: center; }
 button, select, input { font-size: 1rem; }
 #state, #result { font-family: monospace; }
 .error { color: #f66; }
</style>
</head>
<body>
<h1>LED strip of <code>{{device_id}}</code></h1>
<div id="swatch"></div>
<div id="strip"></div>
<p id="state">waiting for the strip...</p>
<form id="command">
 <label>effect <select name="effect">{{effect_options}}</select></label>
 <label>colour <input type="color" name="color" value="#ff8800"></label>
 <label>brightness <input type="range" name="brightness" min="0" max="255" value="255"></label>
 <label>duration ms <input type="number" name="duration_ms" min="0" max="600000" value="0"></label>
 <button type="submit">Send</button>
</form>
<div class="quick">
 <button data-effect="solid">solid</button><button data-effect="blink">blink</button>
 <button data-effect="rainbow">rainbow</button>
 <button data-effect="rainbow_cycle">rainbow cycle</button>
 <button data-effect="chase">chase</button><button data-effect="switch">switch</button>
 <button data-effect="off">off</button>
</div>
<p id="result"></p>
<script>
"use strict";
const PIXELS = 30;
const strip = document.getElementById("strip");
for (let i = 0; i < PIXELS; i++) strip.appendChild(document.createElement("div"));
let current = null;
let step = 0;

function wheel(pos) {
  if (pos < 85) return [pos * 3, 255 - pos * 3, 0];
  if (pos < 170) { pos -= 85; return [255 - pos * 3, 0, pos * 3]; }
  pos -= 170; return [0, pos * 3, 255 - pos * 3];
}
function hexRgb(hex) {
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}
function css(rgb, brightness) {
  const [r, g, b] = rgb.map((c) => Math.round((c * brightness) / 255));
  return `rgb(${r},${g},${b})`;
}
function pixel(i, s) {
  const color = hexRgb(s.color);
  switch (s.effect) {
    case "solid": return color;
    case "blink": return Math.floor(step / 10) % 2 === 0 ? color : [0, 0, 0];
    case "rainbow": case "switch": return wheel((i + step) & 255);
    case "rainbow_cycle": return wheel((Math.floor((i * 256) / PIXELS) + step) & 255);
    case "chase": return i % 3 === Math.floor(step / 2) % 3 ? color : [0, 0, 0];
    default: return [0, 0, 0];
  }
}
function paint() {
  step += 1;
  if (current === null) return;
  const cells = strip.children;
  for (let i = 0; i < cells.length; i++) {
    cells[i].style.background = css(pixel(i, current), current.brightness);
  }
  const lit = current.effect === "off" ? [0, 0, 0] : hexRgb(current.color);
  document.getElementById("swatch").style.background = css(lit, current.brightness);
}
async function poll() {
  const line = document.getElementById("state");
  try {
    const response = await fetch("api/led", { cache: "no-store" });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    current = body;
    line.className = "";
    line.textContent = `${body.effect} ${body.color} brightness ${body.brightness}` +
      (body.command_id ? ` (command ${body.command_id})` : "");
  } catch (err) {
    line.className = "error";
    line.textContent = String(err.message || err);
  }
}
async function send(fields) {
  const command = { v: 1, kind: "led", id: "web-" + Date.now().toString(36) +
    Math.random().toString(36).slice(2, 8), ...fields };
  const result = document.getElementById("result");
  const response = await fetch("api/led", { method: "POST",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(command) });
  const body = await response.json();
  result.className = response.ok ? "" : "error";
  result.textContent = response.ok ? `accepted ${body.accepted}` : body.error;
  poll();
}
function formFields() {
  const form = document.getElementById("command");
  return { color: form.color.value, brightness: parseInt(form.brightness.value, 10),
    duration_ms: parseInt(form.duration_ms.value, 10) || 0 };
}
document.getElementById("command").addEventListener("submit", (event) => {
  event.preventDefault();
  send({ effect: event.target.effect.value, ...formFields() });
});
document.querySelectorAll(".quick button").forEach((button) => {
  button.addEventListener("click", () => send({ effect: button.dataset.effect, ...formFields() }));
});
setInterval(paint, 50);
setInterval(poll, 1000);
poll();
</script>
</body>
</html>
"""
