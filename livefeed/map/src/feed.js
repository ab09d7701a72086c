// The connection to the livefeed's WebSocket API (docs/live-api.md): the client token, the
// subscription, reconnects with backoff.

const TOKEN_KEY = 'drover.token';
const SUBSCRIBE_DEBOUNCE_MS = 300;

/** token returns the client token of this tab. */
export function token() { return sessionStorage.getItem(TOKEN_KEY) || ''; }
/** setToken keeps a token for this tab (sessionStorage: gone when the tab closes). */
export function setToken(t) { sessionStorage.setItem(TOKEN_KEY, t); }

/**
 * takeTokenFromURL moves ?token= into the tab's sessionStorage and out of the address bar, so
 * that it is neither bookmarked nor shown over a shoulder, nor sent as a referrer.
 */
export function takeTokenFromURL(params) {
  const t = params.get('token');
  if (!t) return;
  setToken(t);
  params.delete('token');
  const q = params.toString();
  history.replaceState(null, '', location.pathname + (q ? '?' + q : '') + location.hash);
}

/**
 * Feed is one WebSocket to the livefeed. subscription() returns the subscribe message for the
 * current view; onMessage gets every message; onStatus is told when the connection changes;
 * askToken(why) when the page needs a (new) token.
 */
export class Feed {
  constructor({ subscription, onMessage, onStatus, askToken }) {
    this.subscription = subscription;
    this.onMessage = onMessage;
    this.onStatus = onStatus;
    this.askToken = askToken;
    this.ws = null;
    this.connected = false;
    this.everOpened = false;
    this.failures = 0;
    this.note = 'Connecting…';
    this.seq = 0;
    this.lastSub = null;
    this.timer = 0;
    this.messages = 0;
  }

  connect() {
    if (!token()) { this.note = 'No token'; this.onStatus(); this.askToken('This map needs a drover client token.'); return; }
    const url = (location.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + location.host + '/v1/live?token=' + encodeURIComponent(token());
    let opened = false;
    const ws = (this.ws = new WebSocket(url));
    ws.onopen = () => {
      opened = this.everOpened = true;
      this.connected = true; this.connectedAt = performance.now(); this.failures = 0; this.note = '';
      this.onStatus();
      this.subscribe();
    };
    ws.onmessage = (ev) => { this.messages++; this.onMessage(JSON.parse(ev.data)); };
    ws.onclose = (ev) => {
      this.connected = false; this.ws = null;
      if (!opened) this.failures++;
      // A browser is not told why an upgrade failed: refused twice without ever opening is
      // most likely a bad token.
      if (!opened && this.failures >= 2 && !this.everOpened) {
        this.note = 'Not connected'; this.onStatus();
        this.askToken('The server refused the connection: check the token.');
        return;
      }
      const wait = Math.min(30, Math.pow(2, Math.min(this.failures, 5))) * (0.75 + Math.random() * 0.5);
      const why = ev.code === 4002 ? 'too slow' : ev.code === 4003 ? 'token revoked' : ev.code === 4004 ? 'token expired'
        : ev.code === 1001 ? 'server restarting' : ev.reason || 'connection lost';
      this.note = `Disconnected (${why}), retrying in ${Math.round(wait)} s`;
      this.onStatus();
      setTimeout(() => this.connect(), wait * 1000);
    };
  }

  /** subscribeSoon subscribes once the view has stopped changing for a moment. */
  subscribeSoon() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.subscribe(), SUBSCRIBE_DEBOUNCE_MS);
  }

  /** subscribe sends the current subscription now. */
  subscribe() {
    clearTimeout(this.timer);
    if (!this.ws || this.ws.readyState !== 1) return;
    const m = Object.assign({ type: 'subscribe', id: String(++this.seq) }, this.subscription());
    this.lastSub = m;
    this.ws.send(JSON.stringify(m));
  }
}
