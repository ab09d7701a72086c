// The offline basemap: land, coastlines, country borders and country names from Natural Earth
// (the world-atlas package's countries-50m TopoJSON, copied into the bundle as basemap.json and
// decoded here with topojson-client). It needs no network beyond the livefeed that serves the
// page, so the map shows where vehicles are on a laptop, in a test, or in a control room with
// no internet. Online tiles (config.tiles) draw over it when configured and reachable.
import L from 'leaflet';
import { feature, mesh } from 'topojson-client';
import { el } from './util.js';

const LAND = { fill: true, fillColor: '#f4f0e6', fillOpacity: 1, color: '#8fa9bd', weight: 1, opacity: 1, interactive: false };
const BORDER = { color: '#b3a68f', weight: 0.8, opacity: 1, interactive: false };

/**
 * Basemap draws the offline basemap into its own panes below everything else.
 * state() says whether it loaded, how many land polygons and border lines it holds and how many
 * country names are shown.
 */
export class Basemap {
  constructor(map) {
    this.map = map;
    this.loaded = false;
    this.error = '';
    this.polygons = 0;
    this.lines = 0;
    this.labels = [];
    this.labelsHidden = false;
    this.copies = new Map(); // world copy (-1, 0, 1) -> L.LayerGroup
    map.createPane('basemap').style.zIndex = 150; // under the tiles (200)
    map.createPane('basemapLabels').style.zIndex = 360; // over geofences (350), under vehicles
    map.getPane('basemapLabels').style.pointerEvents = 'none';
    this.renderer = L.canvas({ pane: 'basemap', padding: 0.3 });
    this.labelLayer = L.layerGroup().addTo(map);
  }

  /** load fetches and draws the basemap; an error is kept for state() and logged. */
  async load(url = 'basemap.json') {
    try {
      const r = await fetch(url, { credentials: 'omit' });
      if (!r.ok) throw new Error(`GET ${url}: ${r.status}`);
      const topo = await r.json();
      // One layer per polygon and per border line (not one MultiPolygon for the world), so
      // that Leaflet culls what is off screen.
      const land = feature(topo, topo.objects.land);
      this.landPolys = (land.geometry ? [land] : land.features).flatMap(polygonsOf).map((rings) => rings.map(unwrapRing));
      const borders = mesh(topo, topo.objects.countries, (a, b) => a !== b);
      this.borderLines = borders.type === 'MultiLineString' ? borders.coordinates : [borders.coordinates];
      this.polygons = this.landPolys.length;
      this.lines = this.borderLines.length;
      this.countryLabels = feature(topo, topo.objects.countries).features.map(labelPoint).filter(Boolean);
      this.map.attributionControl.addAttribution('Basemap: <a href="https://www.naturalearthdata.com/" target="_blank" rel="noopener">Natural Earth</a> · <a href="third-party-notices.txt" target="_blank">notices</a>');
      this.showCopy(0);
      this.map.on('moveend', () => this.update());
      this.loaded = true;
      this.update();
    } catch (err) {
      this.error = String(err);
      console.error('drover map: offline basemap', err);
    }
  }

  /** showCopy draws the world copy k (its longitudes shifted by k·360) once it is needed. */
  showCopy(k) {
    if (this.copies.has(k)) return;
    const shift = (ring) => ring.map((p) => [p[1], p[0] + 360 * k]);
    const g = L.layerGroup();
    for (const poly of this.landPolys) g.addLayer(L.polygon(poly.map(shift), { ...LAND, renderer: this.renderer }));
    for (const line of this.borderLines) g.addLayer(L.polyline(shift(line), { ...BORDER, renderer: this.renderer }));
    g.addTo(this.map);
    this.copies.set(k, g);
  }

  /** hideLabels hides the country names (online tiles bring their own). */
  hideLabels(hidden) {
    if (this.labelsHidden === hidden) return;
    this.labelsHidden = hidden;
    this.update();
  }

  update() {
    if (!this.loaded) return;
    const b = this.map.getBounds();
    // The world copies the view reaches across the antimeridian.
    for (let k = Math.floor((b.getWest() + 180) / 360); k <= Math.floor((b.getEast() + 180) / 360); k++) {
      if (k >= -1 && k <= 1) this.showCopy(k);
    }
    this.placeLabels(b);
  }

  // placeLabels shows the names of the countries big enough at this zoom to hold them.
  placeLabels(bounds) {
    this.labelLayer.clearLayers();
    this.labels = [];
    if (this.labelsHidden) return;
    const z = this.map.getZoom();
    if (z < 3) return;
    const pxPerDeg = 256 * Math.pow(2, z) / 360;
    const c = bounds.getCenter().lng;
    for (const l of this.countryLabels) {
      if (l.area * pxPerDeg * pxPerDeg < 7000) continue;
      const lon = l.lon + 360 * Math.round((c - l.lon) / 360);
      if (!bounds.contains([l.lat, lon])) continue;
      const icon = L.divIcon({ className: 'country-label-wrap', iconSize: [0, 0], html: el('span', 'country-label', l.name) });
      this.labelLayer.addLayer(L.marker([l.lat, lon], { icon, interactive: false, keyboard: false, pane: 'basemapLabels' }));
      this.labels.push(l.name);
    }
  }

  state() {
    return { loaded: this.loaded, error: this.error, polygons: this.polygons, borders: this.lines,
      copies: Array.from(this.copies.keys()).sort(), labels: this.labels.slice() };
  }
}

// polygonsOf returns the polygons (each a list of rings of [lon, lat]) of a GeoJSON feature.
function polygonsOf(f) {
  const g = f.geometry;
  if (!g) return [];
  if (g.type === 'Polygon') return [g.coordinates];
  if (g.type === 'MultiPolygon') return g.coordinates;
  return [];
}

// labelPoint places a country's name at the centroid of its largest polygon's outer ring
// (planar, in degrees: good enough to put a word on), with that ring's area for the zoom rule.
function labelPoint(f) {
  const name = f.properties && f.properties.name;
  if (!name) return null;
  let best = null;
  for (const poly of polygonsOf(f)) {
    const ring = poly[0];
    let a = 0, cx = 0, cy = 0;
    for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
      const cross = ring[j][0] * ring[i][1] - ring[i][0] * ring[j][1];
      a += cross; cx += (ring[j][0] + ring[i][0]) * cross; cy += (ring[j][1] + ring[i][1]) * cross;
    }
    if (a === 0) continue;
    const area = Math.abs(a / 2);
    if (!best || area > best.area) best = { name, area, lon: cx / (3 * a), lat: cy / (3 * a) };
  }
  return best;
}

// unwrapRing makes a ring's longitudes continuous across the antimeridian (Natural Earth jumps
// from 180 to -180, which Leaflet would draw as a band around the world): eastern Russia then
// reaches past 180, where the world copies (showCopy) take over. A ring around a pole
// (Antarctica) is closed along the pole.
function unwrapRing(ring) {
  const out = [];
  let off = 0;
  for (const [lon, lat] of ring) {
    if (out.length) {
      const d = lon + off - out[out.length - 1][0];
      if (d > 180) off -= 360;
      else if (d < -180) off += 360;
    }
    out.push([lon + off, lat]);
  }
  if (out.length && Math.abs(out[out.length - 1][0] - out[0][0]) > 180) {
    const pole = out.reduce((s, p) => s + p[1], 0) < 0 ? -90 : 90;
    out.push([out[out.length - 1][0], pole], [out[0][0], pole]);
  }
  return out;
}
