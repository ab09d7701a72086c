// drover live map: vehicles from the livefeed's WebSocket API (docs/live-api.md) drawn on a
// canvas in Web Mercator. No third-party code. OpenStreetMap raster tiles are drawn underneath
// when they load; without them (offline) the map shows a plain background with a lat/lon grid
// and a scale bar, and works the same.
//
// URL parameters: token (client token; moved to sessionStorage and removed from the address
// bar), lat, lon, zoom (initial view), fleets (comma-separated initial filter), rate (max
// updates per second per vehicle), tiles=off (never fetch tiles).
//
// For tests and tools, window.droverMap.state() returns what is drawn; body carries
// data-connected and data-vehicles.
(function () {
  'use strict';

  var TILE = 256;
  var MIN_ZOOM = 1, MAX_ZOOM = 19;
  var MAX_LAT = 85.05112878;
  var TILE_URL = 'https://tile.openstreetmap.org/{z}/{x}/{y}.png';
  var SUBSCRIBE_DEBOUNCE_MS = 300;
  var ANIM_MS = 600;
  var STALE_MS = 5 * 60 * 1000;
  // Fleet and class colours: distinct on the light map, readable for most colour vision.
  var PALETTE = ['#2563c9', '#e4572e', '#139a7a', '#8e44ad', '#e0a100', '#d6336c',
    '#3f7f3f', '#8c5a2b', '#0096c7', '#5c6b7a', '#b5179e', '#6a994e'];

  var params = new URLSearchParams(location.search);
  var tilesOn = params.get('tiles') !== 'off';
  var maxRate = parseFloat(params.get('rate')) || 0;
  var reducedMotion = window.matchMedia && matchMedia('(prefers-reduced-motion: reduce)').matches;

  var $ = function (id) { return document.getElementById(id); };
  var canvas = $('map');
  var ctx = canvas.getContext('2d');

  // ---- state ----
  var W = 0, H = 0, dpr = 1;
  var view = { cx: 0, cy: 0, z: 2 }; // centre in world pixels at zoom z
  var vehicles = new Map(); // id -> {v, lat, lon, fromLat, fromLon, t0, sx, sy}
  var fleetColours = new Map(), classColours = new Map();
  var knownFleets = [];       // from hello and from vehicles seen
  var activeFleets = new Set(); // empty: every fleet
  var colourBy = 'fleet';
  var selected = null;
  var ws = null, connected = false, everOpened = false, failures = 0;
  var statusNote = 'Connecting…';
  var subSeq = 0, lastSub = null, subTimer = 0;
  var hello = null;
  var messages = 0, updateTimes = []; // vehicle updates received, for updates/s
  var fitted = params.has('lat') || params.has('lon') || params.has('zoom');
  var needRender = false, animating = false, lastFrame = 0;

  // ---- Web Mercator ----
  function worldSize(z) { return TILE * Math.pow(2, z); }
  function clampLat(lat) { return Math.max(-MAX_LAT, Math.min(MAX_LAT, lat)); }
  function project(lat, lon, z) {
    var s = worldSize(z);
    var sin = Math.sin(clampLat(lat) * Math.PI / 180);
    return [(lon + 180) / 360 * s, (0.5 - Math.log((1 + sin) / (1 - sin)) / (4 * Math.PI)) * s];
  }
  function unproject(x, y, z) {
    var s = worldSize(z);
    var n = Math.PI - 2 * Math.PI * y / s;
    return [180 / Math.PI * Math.atan(Math.sinh(n)), x / s * 360 - 180];
  }
  function normLon(lon) { return ((lon + 180) % 360 + 360) % 360 - 180; }
  function centre() { var p = unproject(view.cx, view.cy, view.z); return { lat: p[0], lon: normLon(p[1]) }; }
  function setView(lat, lon, z) {
    view.z = Math.max(MIN_ZOOM, Math.min(MAX_ZOOM, z));
    var p = project(lat, lon, view.z);
    view.cx = p[0]; view.cy = p[1];
    viewChanged();
  }
  // toScreen returns the screen position of the copy of (lat, lon) nearest the view centre.
  function toScreen(lat, lon) {
    var p = project(lat, lon, view.z), s = worldSize(view.z);
    var dx = p[0] - view.cx;
    dx -= Math.round(dx / s) * s;
    return [W / 2 + dx, H / 2 + (p[1] - view.cy)];
  }
  function clampView() {
    var s = worldSize(view.z);
    view.cx = ((view.cx % s) + s) % s;
    view.cy = Math.max(0, Math.min(s, view.cy));
  }
  // bbox is the area to subscribe to: the viewport and a margin, split at the antimeridian by
  // giving west > east, the whole world when the view is wider than it.
  function bbox() {
    var s = worldSize(view.z);
    var mx = W * 0.15, my = H * 0.15;
    var top = view.cy - H / 2 - my, bottom = view.cy + H / 2 + my;
    var north = top <= 0 ? 90 : unproject(view.cx, top, view.z)[0];
    var south = bottom >= s ? -90 : unproject(view.cx, bottom, view.z)[0];
    var west = -180, east = 180;
    if (W + 2 * mx < s) {
      west = normLon(unproject(view.cx - W / 2 - mx, 0, view.z)[1]);
      east = normLon(unproject(view.cx + W / 2 + mx, 0, view.z)[1]);
      if (east === -180) east = 180;
    }
    var r = function (x) { return Math.round(x * 1e6) / 1e6; };
    return { west: r(west), south: r(Math.max(-90, south)), east: r(east), north: r(Math.min(90, north)) };
  }

  // ---- colours ----
  function colourFor(map, key) {
    key = key || '—';
    var c = map.get(key);
    if (!c) { c = PALETTE[map.size % PALETTE.length]; map.set(key, c); }
    return c;
  }
  function vehicleColour(v) { return colourBy === 'class' ? colourFor(classColours, v.class) : colourFor(fleetColours, v.fleet); }

  // ---- tiles ----
  var tiles = new Map(); // "z/x/y" -> {img, ok, err, used}
  var tileLoads = 0, tileErrors = 0, tilesLoaded = 0, tilesPausedUntil = 0;
  function tile(z, x, y, load) {
    var key = z + '/' + x + '/' + y;
    var t = tiles.get(key);
    if (t) { t.used = performance.now(); return t; }
    if (!load || !tilesOn || performance.now() < tilesPausedUntil || tileLoads >= 8) return null;
    t = { img: new Image(), ok: false, err: false, used: performance.now() };
    t.img.referrerPolicy = 'strict-origin';
    t.img.onload = function () { t.ok = true; tileLoads--; tilesLoaded++; tileErrors = 0; $('attrib').hidden = false; requestRender(); };
    t.img.onerror = function () {
      t.err = true; tileLoads--;
      // Offline, or blocked: stop asking for a while, then try again.
      if (++tileErrors >= 6) { tilesPausedUntil = performance.now() + 60000; tileErrors = 0; tiles.forEach(function (u, k) { if (u.err) tiles.delete(k); }); }
    };
    tileLoads++;
    t.img.src = TILE_URL.replace('{z}', z).replace('{x}', x).replace('{y}', y);
    tiles.set(key, t);
    if (tiles.size > 600) { // forget the least recently drawn
      var all = Array.from(tiles.entries()).sort(function (a, b) { return a[1].used - b[1].used; });
      for (var i = 0; i < 150; i++) tiles.delete(all[i][0]);
    }
    return t;
  }
  function drawTiles() {
    if (!tilesOn) return false;
    var tz = Math.max(0, Math.min(MAX_ZOOM, Math.round(view.z)));
    var scale = Math.pow(2, view.z - tz), n = Math.pow(2, tz), size = TILE * scale;
    var cx = view.cx / scale, cy = view.cy / scale;
    var x0 = Math.floor((cx - W / 2 / scale) / TILE), x1 = Math.floor((cx + W / 2 / scale) / TILE);
    var y0 = Math.max(0, Math.floor((cy - H / 2 / scale) / TILE)), y1 = Math.min(n - 1, Math.floor((cy + H / 2 / scale) / TILE));
    var drew = false;
    for (var ty = y0; ty <= y1; ty++) {
      for (var tx = x0; tx <= x1; tx++) {
        var wx = ((tx % n) + n) % n;
        var sx = W / 2 + (tx * TILE - cx) * scale, sy = H / 2 + (ty * TILE - cy) * scale;
        var t = tile(tz, wx, ty, true);
        if (t && t.ok) { ctx.drawImage(t.img, sx, sy, size + 0.5, size + 0.5); drew = true; continue; }
        // Not loaded yet: stretch a loaded parent tile over the gap.
        for (var up = 1; up <= 3 && tz - up >= 0; up++) {
          var k = Math.pow(2, up), p = tile(tz - up, Math.floor(wx / k), Math.floor(ty / k), false);
          if (p && p.ok) {
            var sub = TILE / k;
            ctx.drawImage(p.img, (wx % k) * sub, (ty % k) * sub, sub, sub, sx, sy, size + 0.5, size + 0.5);
            drew = true;
            break;
          }
        }
      }
    }
    return drew;
  }

  // ---- background, grid, scale ----
  function niceStep(degPerPx) {
    var steps = [45, 30, 20, 10, 5, 2, 1, 0.5, 0.25, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001];
    var want = degPerPx * 140, best = steps[0];
    for (var i = 0; i < steps.length; i++) if (steps[i] >= want) best = steps[i];
    return best;
  }
  function fmtDeg(d, pos, neg) {
    var a = Math.abs(d), s = a >= 1 ? +a.toFixed(2) : +a.toFixed(3);
    return (Math.abs(d) < 1e-9 ? '0' : s) + '°' + (d > 1e-9 ? pos : d < -1e-9 ? neg : '');
  }
  function drawBackground(withTiles) {
    var s = worldSize(view.z);
    ctx.fillStyle = '#e7ecf1';
    ctx.fillRect(0, 0, W, H);
    // Beyond the Mercator world (over the poles).
    var top = H / 2 - view.cy, bottom = H / 2 + (s - view.cy);
    ctx.fillStyle = '#d9e0e7';
    if (top > 0) ctx.fillRect(0, 0, W, top);
    if (bottom < H) ctx.fillRect(0, bottom, W, H - bottom);
    return withTiles ? drawTiles() : false;
  }
  function drawGrid(onTiles) {
    var step = niceStep(360 / worldSize(view.z));
    var tl = unproject(view.cx - W / 2, Math.max(0, view.cy - H / 2), view.z);
    var br = unproject(view.cx + W / 2, Math.min(worldSize(view.z), view.cy + H / 2), view.z);
    ctx.save();
    ctx.lineWidth = 1;
    ctx.strokeStyle = onTiles ? 'rgba(40,60,90,.16)' : 'rgba(70,95,125,.22)';
    ctx.fillStyle = onTiles ? 'rgba(30,45,65,.75)' : 'rgba(60,80,105,.85)';
    ctx.font = '11px system-ui, "DejaVu Sans", sans-serif';
    var labels = [];
    var lon0 = Math.ceil(tl[1] / step) * step;
    for (var lon = lon0; lon <= br[1] + 1e-9; lon += step) {
      var x = Math.round(toScreen(0, lon)[0]) + 0.5;
      ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, H); ctx.stroke();
      if (x > 56) labels.push([Math.abs(normLon(lon)) === 180 ? '180°' : fmtDeg(normLon(lon), 'E', 'W'), x + 4, 14]);
    }
    var lat0 = Math.ceil(br[0] / step) * step;
    for (var lat = lat0; lat <= tl[0] + 1e-9; lat += step) {
      if (Math.abs(lat) > MAX_LAT) continue;
      var y = Math.round(toScreen(lat, 0)[1]) + 0.5;
      ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(W, y); ctx.stroke();
      if (y > 92 && y < H - 48) labels.push([fmtDeg(lat, 'N', 'S'), 6, y - 4]);
    }
    labels.forEach(function (l) { halo(l[0], l[1], l[2]); });
    ctx.restore();
  }
  function halo(text, x, y) {
    ctx.save();
    ctx.strokeStyle = 'rgba(255,255,255,.85)'; ctx.lineWidth = 3; ctx.lineJoin = 'round';
    ctx.strokeText(text, x, y); ctx.restore();
    ctx.fillText(text, x, y);
  }
  function drawScale() {
    var lat = centre().lat;
    var mPerPx = 40075016.686 * Math.cos(lat * Math.PI / 180) / worldSize(view.z);
    var maxM = mPerPx * 120, pow = Math.pow(10, Math.floor(Math.log10(maxM))), len = pow;
    [5, 2, 1].some(function (k) { if (k * pow <= maxM) { len = k * pow; return true; } return false; });
    var px = len / mPerPx, x = W - 16 - px, y = H - 28;
    var label = len >= 1000 ? (len / 1000) + ' km' : len + ' m';
    ctx.save();
    ctx.fillStyle = 'rgba(255,255,255,.85)';
    ctx.fillRect(x - 6, y - 16, px + 12, 24);
    ctx.strokeStyle = '#3a4a5c'; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.moveTo(x, y - 4); ctx.lineTo(x, y + 2); ctx.lineTo(x + px, y + 2); ctx.lineTo(x + px, y - 4); ctx.stroke();
    ctx.fillStyle = '#1d2733'; ctx.font = '11px system-ui, "DejaVu Sans", sans-serif'; ctx.textAlign = 'center';
    ctx.fillText(label, x + px / 2, y - 5);
    ctx.restore();
  }

  // ---- vehicles ----
  function ease(t) { return 1 - Math.pow(1 - t, 3); }
  function drawVehicles(now) {
    var many = vehicles.size > 400;
    var r = many ? 5 : 7;
    var labels = view.z >= 11 || vehicles.size <= 40;
    var list = [];
    animating = false;
    vehicles.forEach(function (e) {
      if (e.lat === undefined) return;
      var lat = e.lat, lon = e.lon;
      if (e.t0 && !reducedMotion) {
        var t = (now - e.t0) / ANIM_MS;
        if (t < 1) {
          var k = ease(t), dl = e.lon - e.fromLon;
          dl -= Math.round(dl / 360) * 360; // the short way across the antimeridian
          lat = e.fromLat + (e.lat - e.fromLat) * k; lon = e.fromLon + dl * k;
          animating = true;
        } else e.t0 = 0;
      }
      var p = toScreen(lat, lon);
      e.sx = p[0]; e.sy = p[1]; e.cluster = null;
      e.visible = p[0] > -20 && p[0] < W + 20 && p[1] > -20 && p[1] < H + 20;
      if (e.visible) list.push(e);
    });
    var shown = list.length;
    list = cluster(list);
    // Selected last, so that it is on top.
    list.sort(function (a, b) { return (a.v.id === selected) - (b.v.id === selected); });
    var wall = Date.now();
    clusters.forEach(drawCluster);
    list.forEach(function (e) { drawMarker(e, r, wall); });
    if (labels) {
      // Labels that would overlap one already placed (or a marker) are left out; the selected
      // vehicle's goes first.
      ctx.save();
      ctx.font = '11.5px system-ui, "DejaVu Sans", sans-serif'; ctx.fillStyle = '#1d2733';
      var boxes = list.map(function (e) { return [e.sx - r - 1, e.sy - r - 1, e.sx + r + 1, e.sy + r + 1]; });
      list.slice().reverse().forEach(function (e) {
        var w = ctx.measureText(e.v.id).width, x0 = e.sx + r + 6, y0 = e.sy - 7;
        var b = [x0 - 1, y0, x0 + w + 1, y0 + 14];
        for (var i = 0; i < boxes.length; i++) {
          var o = boxes[i];
          if (b[0] < o[2] && b[2] > o[0] && b[1] < o[3] && b[3] > o[1]) return;
        }
        boxes.push(b);
        halo(e.v.id, x0, e.sy + 4);
      });
      ctx.restore();
    }
    return shown;
  }
  // Where many vehicles crowd (a zoomed-out view of a depot or a city), a bubble with their number
  // stands for them: grid cells of CELL pixels with at least 4 vehicles, never hiding the
  // selected one. A click on a bubble zooms in on it.
  var CELL = 40, clusters = [];
  function cluster(list) {
    clusters = [];
    if (list.length < 30) return list;
    var cells = new Map();
    list.forEach(function (e) {
      var k = Math.floor(e.sx / CELL) + ':' + Math.floor(e.sy / CELL), g = cells.get(k);
      if (!g) { g = []; cells.set(k, g); }
      g.push(e);
    });
    var singles = [];
    cells.forEach(function (g) {
      if (g.length < 4 || g.some(function (e) { return e.v.id === selected; })) { singles.push.apply(singles, g); return; }
      var c = { x: 0, y: 0, n: g.length, fleet: g[0].v.fleet };
      g.forEach(function (e) { c.x += e.sx / g.length; c.y += e.sy / g.length; if (e.v.fleet !== c.fleet) c.fleet = null; e.cluster = c; });
      clusters.push(c);
    });
    return singles;
  }
  function clusterRadius(c) { return 11 + Math.min(10, Math.log2(c.n) * 2); }
  function drawCluster(c) {
    var rad = clusterRadius(c);
    ctx.save();
    ctx.shadowColor = 'rgba(20,35,55,.35)'; ctx.shadowBlur = 4; ctx.shadowOffsetY = 1;
    ctx.beginPath(); ctx.arc(c.x, c.y, rad, 0, 2 * Math.PI);
    ctx.fillStyle = c.fleet && colourBy === 'fleet' ? colourFor(fleetColours, c.fleet) : '#3a4a5c';
    ctx.fill();
    ctx.shadowColor = 'transparent';
    ctx.lineWidth = 3; ctx.strokeStyle = 'rgba(255,255,255,.85)'; ctx.stroke();
    ctx.fillStyle = '#ffffff'; ctx.font = '600 12px system-ui, "DejaVu Sans", sans-serif';
    ctx.textAlign = 'center'; ctx.textBaseline = 'middle';
    ctx.fillText(String(c.n), c.x, c.y + 0.5);
    ctx.restore();
  }
  function clusterAt(x, y) {
    for (var i = 0; i < clusters.length; i++) {
      var c = clusters[i], rad = clusterRadius(c);
      if ((c.x - x) * (c.x - x) + (c.y - y) * (c.y - y) <= rad * rad) return c;
    }
    return null;
  }
  function drawMarker(e, r, wall) {
    var v = e.v, x = e.sx, y = e.sy;
    var stale = wall - (v.recv_ms || v.time_ms) > STALE_MS;
    var moving = v.heading_deg !== undefined && (v.speed_kmh === undefined || v.speed_kmh > 1);
    var col = stale ? '#9aa6b2' : vehicleColour(v);
    ctx.save();
    if (v.id === selected) {
      ctx.beginPath(); ctx.arc(x, y, r + 6, 0, 2 * Math.PI);
      ctx.fillStyle = 'rgba(37,99,201,.18)'; ctx.fill();
      ctx.lineWidth = 2; ctx.strokeStyle = '#1d2733'; ctx.stroke();
    }
    var off = v.ignition === false;
    ctx.shadowColor = 'rgba(20,35,55,.35)'; ctx.shadowBlur = 3; ctx.shadowOffsetY = 1;
    ctx.beginPath();
    if (moving && !off) {
      // A navigation arrow pointing where the vehicle heads.
      var a = v.heading_deg * Math.PI / 180, c = Math.cos(a), s = Math.sin(a);
      var pts = [[0, -1.55], [1.1, 1.1], [0, 0.5], [-1.1, 1.1]];
      pts.forEach(function (p, i) {
        var px = x + (p[0] * c - p[1] * s) * r, py = y + (p[0] * s + p[1] * c) * r;
        if (i === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
      });
      ctx.closePath();
    } else {
      ctx.arc(x, y, r * 0.9, 0, 2 * Math.PI);
    }
    ctx.lineJoin = 'round';
    ctx.fillStyle = off ? '#ffffff' : col;
    ctx.fill();
    ctx.shadowColor = 'transparent';
    if (off) {
      // Engine off: a ring in the vehicle's colour.
      ctx.lineWidth = 2.5; ctx.strokeStyle = col; ctx.stroke();
    } else {
      ctx.lineWidth = 1.5; ctx.strokeStyle = '#ffffff'; ctx.stroke();
    }
    ctx.restore();
  }

  // ---- render loop ----
  function requestRender() {
    if (needRender) return;
    needRender = true;
    requestAnimationFrame(frame);
  }
  function frame(now) {
    // Animations run at most ~30 frames/s: a screen watched all day should not heat the room.
    if (animating && now - lastFrame < 32) { requestAnimationFrame(frame); return; }
    needRender = false; lastFrame = now;
    render(now);
    if (animating) requestRender();
  }
  var drawn = 0;
  function render(now) {
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    var onTiles = drawBackground(true);
    drawGrid(onTiles);
    drawn = drawVehicles(now || performance.now());
    drawScale();
    if (selected) updatePanel();
  }
  function resize() {
    dpr = window.devicePixelRatio || 1;
    W = canvas.clientWidth; H = canvas.clientHeight;
    canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
    requestRender();
  }

  // ---- interaction ----
  var drag = null;
  canvas.addEventListener('pointerdown', function (ev) {
    canvas.setPointerCapture(ev.pointerId);
    drag = { x: ev.clientX, y: ev.clientY, cx: view.cx, cy: view.cy, moved: false };
  });
  canvas.addEventListener('pointermove', function (ev) {
    if (!drag) { hover(ev); return; }
    var dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
    if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 4) return;
    drag.moved = true; canvas.classList.add('dragging');
    view.cx = drag.cx - dx; view.cy = drag.cy - dy;
    viewChanged();
  });
  canvas.addEventListener('pointerup', function (ev) {
    if (drag && !drag.moved) pick(ev);
    drag = null; canvas.classList.remove('dragging');
  });
  canvas.addEventListener('wheel', function (ev) {
    ev.preventDefault();
    var rect = canvas.getBoundingClientRect();
    var dz = -ev.deltaY * (ev.deltaMode === 1 ? 0.05 : 0.0022);
    zoomAt(view.z + Math.max(-1, Math.min(1, dz)), ev.clientX - rect.left, ev.clientY - rect.top);
  }, { passive: false });
  canvas.addEventListener('dblclick', function (ev) {
    var rect = canvas.getBoundingClientRect();
    zoomAt(Math.round(view.z) + 1, ev.clientX - rect.left, ev.clientY - rect.top);
  });
  function zoomAt(z, mx, my) {
    z = Math.max(MIN_ZOOM, Math.min(MAX_ZOOM, z));
    var k = Math.pow(2, z - view.z);
    var wx = view.cx + (mx - W / 2), wy = view.cy + (my - H / 2);
    view.cx = wx * k - (mx - W / 2); view.cy = wy * k - (my - H / 2); view.z = z;
    viewChanged();
  }
  $('zin').onclick = function () { zoomAt(Math.round(view.z) + 1, W / 2, H / 2); };
  $('zout').onclick = function () { zoomAt(Math.round(view.z) - 1, W / 2, H / 2); };
  document.addEventListener('keydown', function (ev) {
    if (ev.target && (ev.target.tagName === 'INPUT' || ev.target.tagName === 'SELECT')) return;
    if (ev.key === '+' || ev.key === '=') $('zin').onclick();
    else if (ev.key === '-' || ev.key === '_') $('zout').onclick();
    else if (ev.key === 'Escape') select(null);
  });
  function nearest(ev) {
    var rect = canvas.getBoundingClientRect(), x = ev.clientX - rect.left, y = ev.clientY - rect.top;
    var best = null, bd = 14 * 14;
    vehicles.forEach(function (e) {
      if (!e.visible || e.cluster) return;
      var d = (e.sx - x) * (e.sx - x) + (e.sy - y) * (e.sy - y);
      if (d < bd) { bd = d; best = e.v.id; }
    });
    return best;
  }
  function pick(ev) {
    var id = nearest(ev);
    if (id) { select(id); return; }
    var rect = canvas.getBoundingClientRect(), c = clusterAt(ev.clientX - rect.left, ev.clientY - rect.top);
    if (c) { zoomAt(view.z + 2, c.x, c.y); return; }
    select(null);
  }
  function hover(ev) {
    var rect = canvas.getBoundingClientRect();
    canvas.classList.toggle('hover', nearest(ev) !== null || clusterAt(ev.clientX - rect.left, ev.clientY - rect.top) !== null);
  }
  function viewChanged() {
    clampView();
    requestRender();
    clearTimeout(subTimer);
    subTimer = setTimeout(subscribe, SUBSCRIBE_DEBOUNCE_MS);
  }

  // ---- panel ----
  function compass(deg) { return ['N', 'NE', 'E', 'SE', 'S', 'SW', 'W', 'NW'][Math.round(((deg % 360) + 360) % 360 / 45) % 8]; }
  function ago(ms) {
    var s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    return Math.floor(s / 3600) + ' h ago';
  }
  function num(x, d) { return x === undefined ? null : x.toFixed(d); }
  function select(id) {
    selected = id;
    $('panel').hidden = !id;
    requestRender();
    if (id) updatePanel();
  }
  function updatePanel() {
    var e = vehicles.get(selected);
    if (!e) { $('psub').textContent = 'Out of view: no longer subscribed to this vehicle.'; return; }
    var v = e.v;
    $('ptitle').textContent = v.id;
    $('pswatch').style.background = vehicleColour(v);
    $('psub').textContent = [v.fleet, v.class, v.region].filter(Boolean).join(' · ');
    var rows = [
      ['Last seen', ago(v.recv_ms || v.time_ms), Date.now() - (v.recv_ms || v.time_ms) > STALE_MS ? 'stale' : ''],
      ['Device time', new Date(v.time_ms).toLocaleTimeString()],
      ['Position', v.lat === undefined ? null : v.lat.toFixed(5) + ', ' + v.lon.toFixed(5)],
      ['Speed', num(v.speed_kmh, 0) && num(v.speed_kmh, 0) + ' km/h'],
      ['Heading', v.heading_deg === undefined ? null : Math.round(v.heading_deg) + '° ' + compass(v.heading_deg)],
      ['Ignition', v.ignition === undefined ? null : (v.ignition ? 'on' : 'off')],
      ['Engine temp', num(v.engine_temp_c, 1) && num(v.engine_temp_c, 1) + ' °C'],
      ['Engine speed', num(v.engine_rpm, 0) && num(v.engine_rpm, 0) + ' rpm'],
      ['Battery', num(v.battery_v, 1) && num(v.battery_v, 1) + ' V'],
      ['Fuel', num(v.fuel_pct, 0) && num(v.fuel_pct, 0) + ' %'],
      ['Odometer', num(v.odometer_km, 0) && Number(num(v.odometer_km, 0)).toLocaleString() + ' km']
    ];
    var dl = $('pvalues');
    var html = document.createDocumentFragment();
    rows.forEach(function (r) {
      if (r[1] === null || r[1] === undefined) return;
      var dt = document.createElement('dt'), dd = document.createElement('dd');
      dt.textContent = r[0]; dd.textContent = r[1];
      if (r[2]) dd.className = r[2];
      html.appendChild(dt); html.appendChild(dd);
    });
    dl.replaceChildren(html);
  }
  $('pclose').onclick = function () { select(null); };
  $('pcentre').onclick = function () {
    var e = vehicles.get(selected);
    if (e && e.lat !== undefined) setView(e.lat, e.lon, Math.max(view.z, 12));
  };

  // ---- fleet filter ----
  function addFleet(f) {
    if (!f || knownFleets.indexOf(f) >= 0) return false;
    knownFleets.push(f);
    knownFleets.sort();
    colourFor(fleetColours, f);
    return true;
  }
  function renderFleets() {
    var nav = $('fleets'), counts = {};
    vehicles.forEach(function (e) { counts[e.v.fleet] = (counts[e.v.fleet] || 0) + 1; });
    var frag = document.createDocumentFragment();
    var all = document.createElement('button');
    all.type = 'button'; all.className = 'chip'; all.textContent = 'All fleets';
    all.setAttribute('aria-pressed', activeFleets.size === 0 ? 'true' : 'false');
    all.onclick = function () { activeFleets.clear(); renderFleets(); subscribe(); };
    frag.appendChild(all);
    knownFleets.forEach(function (f) {
      var b = document.createElement('button'), on = activeFleets.size === 0 || activeFleets.has(f);
      b.type = 'button'; b.className = 'chip' + (on ? '' : ' off'); b.dataset.fleet = f;
      b.setAttribute('aria-pressed', activeFleets.has(f) ? 'true' : 'false');
      b.title = on ? 'Show only the fleets you pick' : 'Show this fleet';
      var sw = document.createElement('span'); sw.className = 'swatch'; sw.style.background = colourFor(fleetColours, f);
      var name = document.createElement('span'); name.textContent = f;
      var n = document.createElement('span'); n.className = 'n'; n.textContent = counts[f] ? String(counts[f]) : '';
      b.append(sw, name, n);
      b.onclick = function () {
        if (activeFleets.has(f)) activeFleets.delete(f); else activeFleets.add(f);
        if (activeFleets.size === knownFleets.length) activeFleets.clear();
        renderFleets(); subscribe();
      };
      frag.appendChild(b);
    });
    nav.replaceChildren(frag);
  }
  var fleetsDirty = false;
  function fleetsChanged() {
    if (fleetsDirty) return;
    fleetsDirty = true;
    setTimeout(function () { fleetsDirty = false; renderFleets(); }, 500);
  }
  $('colorby').onchange = function (ev) { colourBy = ev.target.value; requestRender(); };

  // ---- connection ----
  function token() { return sessionStorage.getItem('drover.token') || ''; }
  (function takeTokenFromURL() {
    var t = params.get('token');
    if (!t) return;
    sessionStorage.setItem('drover.token', t);
    params.delete('token');
    var q = params.toString();
    history.replaceState(null, '', location.pathname + (q ? '?' + q : '') + location.hash);
  })();
  function askToken(why) {
    $('loginwhy').textContent = why;
    $('login').hidden = false;
    $('token').focus();
  }
  $('login').onsubmit = function (ev) {
    ev.preventDefault();
    sessionStorage.setItem('drover.token', $('token').value.trim());
    $('login').hidden = true; failures = 0; connect();
  };
  function connect() {
    if (!token()) { statusNote = 'No token'; updateStatus(); askToken('This map needs a drover client token.'); return; }
    var url = (location.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + location.host + '/v1/live?token=' + encodeURIComponent(token());
    var opened = false;
    ws = new WebSocket(url);
    ws.onopen = function () { opened = everOpened = true; connected = true; connectedAt = performance.now(); failures = 0; statusNote = ''; updateStatus(); subscribe(); };
    ws.onmessage = function (ev) { onMessage(JSON.parse(ev.data)); };
    ws.onclose = function (ev) {
      connected = false; ws = null;
      if (!opened) failures++;
      // A browser is not told why an upgrade failed: refused twice without opening is most
      // likely a bad token.
      if (!opened && failures >= 2 && !everOpened) { statusNote = 'Not connected'; updateStatus(); askToken('The server refused the connection: check the token.'); return; }
      var wait = Math.min(30, Math.pow(2, Math.min(failures, 5))) * (0.75 + Math.random() * 0.5);
      var why = ev.code === 4002 ? 'too slow' : ev.code === 4003 ? 'token revoked' : ev.code === 1001 ? 'server restarting' : ev.reason || 'connection lost';
      statusNote = 'Disconnected (' + why + '), retrying in ' + Math.round(wait) + ' s';
      updateStatus();
      setTimeout(connect, wait * 1000);
    };
  }
  function subscribe() {
    clearTimeout(subTimer);
    if (!ws || ws.readyState !== 1) return;
    var m = { type: 'subscribe', id: String(++subSeq), bbox: bbox() };
    if (activeFleets.size) m.fleets = Array.from(activeFleets).sort();
    if (maxRate > 0) m.max_rate_hz = maxRate;
    lastSub = m;
    ws.send(JSON.stringify(m));
  }
  function upsert(v, animate, now) {
    var e = vehicles.get(v.id);
    if (!e) { e = { v: v }; vehicles.set(v.id, e); }
    if (v.lat !== undefined) {
      if (animate && e.lat !== undefined && (e.lat !== v.lat || e.lon !== v.lon)) {
        var p = currentPos(e, now);
        e.fromLat = p[0]; e.fromLon = p[1]; e.t0 = now;
      }
      e.lat = v.lat; e.lon = v.lon;
    }
    e.v = v;
    if (addFleet(v.fleet)) fleetsChanged();
  }
  function currentPos(e, now) {
    if (!e.t0) return [e.lat, e.lon];
    var t = Math.min(1, (now - e.t0) / ANIM_MS), k = ease(t), dl = e.lon - e.fromLon;
    dl -= Math.round(dl / 360) * 360;
    return [e.fromLat + (e.lat - e.fromLat) * k, e.fromLon + dl * k];
  }
  function onMessage(m) {
    messages++;
    var now = performance.now();
    switch (m.type) {
      case 'hello':
        hello = m;
        (m.fleets || []).forEach(addFleet);
        renderFleets();
        break;
      case 'snapshot': {
        var keep = vehicles;
        vehicles = new Map();
        m.vehicles.forEach(function (v) {
          var old = keep.get(v.id);
          if (old) vehicles.set(v.id, old);
          upsert(v, true, now);
        });
        if (!fitted && m.vehicles.length) { fitted = true; fitTo(m.vehicles); }
        fleetsChanged();
        break;
      }
      case 'update':
        (m.vehicles || []).forEach(function (v) { upsert(v, true, now); updateTimes.push(now); });
        (m.removed || []).forEach(function (id) { vehicles.delete(id); });
        if (m.removed && m.removed.length) fleetsChanged();
        break;
      case 'error':
        statusNote = 'Server: ' + m.message;
        if (window.console) console.warn('drover livefeed error', m.code, m.message);
        setTimeout(function () { statusNote = ''; updateStatus(); }, 5000);
        break;
    }
    requestRender();
    updateStatus();
  }
  function fitTo(list) {
    var pts = list.filter(function (v) { return v.lat !== undefined; });
    if (!pts.length) return;
    var minLat = 90, maxLat = -90, minLon = 180, maxLon = -180;
    pts.forEach(function (v) {
      minLat = Math.min(minLat, v.lat); maxLat = Math.max(maxLat, v.lat);
      minLon = Math.min(minLon, v.lon); maxLon = Math.max(maxLon, v.lon);
    });
    // The zoom at which the fleet fills about three quarters of the map (fractional zooms
    // are fine: tiles are scaled).
    var z = 12;
    if (pts.length > 1) {
      var a = project(maxLat, minLon, 0), b = project(minLat, maxLon, 0);
      var dx = Math.max(b[0] - a[0], 1e-9), dy = Math.max(b[1] - a[1], 1e-9);
      z = Math.min(15, Math.log2(Math.min(W * 0.75 / dx, (H - 60) * 0.75 / dy)));
    }
    var c = unproject((project(0, minLon, z)[0] + project(0, maxLon, z)[0]) / 2, (project(maxLat, 0, z)[1] + project(minLat, 0, z)[1]) / 2, z);
    setView(c[0], c[1], z);
  }

  // ---- status ----
  var connectedAt = 0;
  function updatesPerSec() {
    var now = performance.now();
    while (updateTimes.length && now - updateTimes[0] > 5000) updateTimes.shift();
    var span = Math.min(5000, Math.max(1000, now - connectedAt));
    return updateTimes.length / (span / 1000);
  }
  function updateStatus() {
    var dot = $('dot'), ups = updatesPerSec();
    dot.className = 'dot ' + (connected ? 'ok' : ws ? 'warn' : 'bad');
    var parts = [];
    parts.push(connected ? 'Connected' : ws ? 'Connecting…' : 'Offline');
    if (statusNote && connected) parts.push(statusNote);
    if (!connected && statusNote) parts[0] = statusNote;
    parts.push(drawn + (drawn === 1 ? ' vehicle' : ' vehicles') + ' shown');
    parts.push((ups < 10 ? ups.toFixed(1) : Math.round(ups)) + ' updates/s');
    $('statustext').textContent = parts.join(' · ');
    document.body.dataset.connected = String(connected);
    document.body.dataset.vehicles = String(drawn);
  }
  setInterval(updateStatus, 1000);

  // ---- for tests and tools ----
  window.droverMap = {
    // state returns what the map shows now: vehicles with their latest position (lat, lon) and
    // where they are drawn (x, y in CSS pixels of the canvas; visible when on screen).
    state: function () {
      var list = [];
      vehicles.forEach(function (e) {
        list.push({ id: e.v.id, fleet: e.v.fleet, class: e.v.class, lat: e.lat, lon: e.lon,
          seq: e.v.seq, x: e.sx, y: e.sy, visible: !!e.visible, clustered: !!e.cluster });
      });
      var c = centre();
      return { connected: connected, vehicles: list, drawn: drawn, updatesPerSec: updatesPerSec(), messages: messages,
        view: { lat: c.lat, lon: c.lon, zoom: view.z, bbox: bbox() }, subscription: lastSub, selected: selected,
        fleets: knownFleets.slice(), activeFleets: Array.from(activeFleets),
        tiles: !tilesOn ? 'off' : tilesLoaded > 0 ? 'ok' : performance.now() < tilesPausedUntil ? 'offline' : 'loading' };
    },
    setView: function (lat, lon, zoom) { fitted = true; setView(lat, lon, zoom); },
    select: select
  };

  // ---- start ----
  window.addEventListener('resize', resize);
  resize();
  var z0 = parseFloat(params.get('zoom'));
  setView(parseFloat(params.get('lat')) || 0, parseFloat(params.get('lon')) || 15, isNaN(z0) ? 2 : z0);
  (params.get('fleets') || '').split(',').filter(Boolean).forEach(function (f) { activeFleets.add(f); addFleet(f); });
  renderFleets();
  connect();
})();
