"""The page template of the HTML review report: markup, style and script.

One string with ``%NAME%`` slots that :func:`matchkit.report.html_render.render_html`
fills in a single pass. It is long (about 300 lines of HTML, CSS and
JavaScript) and cannot be cut sensibly, so it sits in a module of its own,
away from the Python that fills it.
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="%CSP%">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>
:root{--fg:#1d1d1f;--mut:#666;--line:#ddd;--acc:#3b73c8;--keep:#1f8a3b;--warn:#b3261e}
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:var(--fg);background:#f4f5f7}
header.top{background:#fff;border-bottom:1px solid var(--line);padding:12px 20px}
h1{font-size:20px;margin:0 0 4px}
.root{color:var(--mut);font-size:12px;word-break:break-all}
.stats{display:flex;flex-wrap:wrap;gap:8px;margin:10px 0}
.stat{background:#f7f8fa;border:1px solid var(--line);border-radius:6px;padding:6px 10px;min-width:90px}
.stat .v{display:block;font-size:18px;font-weight:600}
.stat .l{color:var(--mut);font-size:12px}
.plot{margin:6px 0}.plot svg{max-width:100%;height:auto}
.note{color:var(--mut);font-size:12px;margin:2px 0}
.controls{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid var(--line);padding:8px 20px;display:flex;flex-wrap:wrap;gap:10px;align-items:center}
.controls label{font-size:12px;color:var(--mut)}
.controls input,.controls select{font:inherit;padding:2px 4px}
.controls input[type=number]{width:70px}
.pager{display:flex;gap:6px;align-items:center;margin-left:auto}
.pager button{font:inherit;padding:2px 8px}
main{padding:12px 20px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;margin:0 0 12px;padding:10px 12px}
.card h2{font-size:15px;margin:0 0 6px;display:flex;gap:10px;flex-wrap:wrap;align-items:baseline}
.card h2 .meta{font-weight:400;color:var(--mut);font-size:12px}
.members{display:flex;flex-wrap:wrap;gap:10px}
figure.m{margin:0;width:176px;border:2px solid transparent;border-radius:6px;padding:4px;background:#fafafa}
figure.m.keep{border-color:var(--keep);background:#f1faf3}
.tb{width:166px;height:166px;display:flex;align-items:center;justify-content:center;background:#eee;border-radius:4px;overflow:hidden}
.tb img{max-width:166px;max-height:166px;width:auto;height:auto;display:block}
.shown{font-size:11px;color:#444;background:#f7f8fa;border-left:2px solid var(--line);padding:2px 4px;margin:3px 0;max-height:4.2em;overflow:hidden;word-break:break-word}
.tb .err{color:var(--warn);font-size:11px;padding:6px;text-align:center}
figcaption{font-size:12px;margin-top:4px;word-break:break-all}
.badge{display:inline-block;background:var(--keep);color:#fff;border-radius:3px;padding:0 5px;font-size:11px;font-weight:600;margin-right:4px}
.dim,.fold{color:var(--mut)}
.sc{font-variant-numeric:tabular-nums}
.k-exact{color:#555}.k-local{color:#8a4fbf}.k-near{color:var(--acc)}
details.pairs{margin-top:8px}
details.pairs summary{cursor:pointer;color:var(--acc);font-size:12px}
table{border-collapse:collapse;font-size:12px;margin-top:4px}
td,th{border-bottom:1px solid #eee;padding:3px 6px;text-align:left;vertical-align:top}
.pic{margin:6px 0}.pic img{max-width:100%;height:auto;border:1px solid var(--line)}
section.skipped{padding:12px 20px 40px}
section.skipped li{word-break:break-all}
.empty{color:var(--mut);padding:20px}
.rvbar{display:flex;flex-wrap:wrap;gap:8px;align-items:center;width:100%;font-size:13px}
.rvbar button{font:inherit;padding:2px 10px;font-weight:600}
.rv{margin-top:4px;font-size:12px;display:flex;gap:8px;align-items:center;flex-wrap:wrap}
.rv button,.card h2 button{font:inherit;font-size:11px;padding:0 6px}
figure.m.off{opacity:.45}
.card.changed{border-color:var(--keep)}
</style></head>
<body>
<header class="top">
<h1>%TITLE%</h1>
<div class="root">Folder: %ROOT%</div>
<div class="stats">%SUMMARY%</div>
%PLOTS%
%NOTES%
</header>
<div class="controls" id="mk-controls">
<label>Sort <select id="mk-sort">
<option value="size">%SIZESORT%</option>
<option value="weak">weakest match first</option>
<option value="strong">strongest match first</option>
<option value="bytes">most bytes in duplicates first</option>
<option value="folder">folder</option>
</select></label>
<label>Weakest score from <input type="number" id="mk-min" step="0.01" min="0" max="1"></label>
<label>to <input type="number" id="mk-max" step="0.01" min="0" max="1"></label>
<label>Size at least <input type="number" id="mk-size" step="1" min="2"></label>
<label>Kind <select id="mk-kind"><option value="">any</option><option value="exact">exact</option>
<option value="near">near</option><option value="local">local features</option></select></label>
<label>Relation <select id="mk-rel"><option value="">any</option></select></label>
<label>Folder contains <input type="search" id="mk-folder" list="mk-folders" size="18"></label>
<datalist id="mk-folders"></datalist>
<label>Per page <select id="mk-per"><option>25</option><option>50</option><option>100</option><option>200</option></select></label>
<div class="pager" id="mk-pager"><button id="mk-prev" type="button">&lsaquo; prev</button>
<span id="mk-count"></span><button id="mk-next" type="button">next &rsaquo;</button></div>
<div class="rvbar" id="mk-review" hidden><span id="mk-review-count"></span>
<label>Move to folder <input type="text" id="mk-to" size="24" placeholder="e.g. ~/dupes (or apply --to DIR)"></label>
<button type="button" id="mk-save">Save review</button><button type="button" id="mk-reset">Reset</button><a id="mk-download" hidden></a>
<span id="mk-saved" class="dim"></span></div>
</div>
<main id="mk-cards"></main>
<div class="controls" style="position:static"><div class="pager"><button id="mk-prev2" type="button">&lsaquo; prev</button>
<span id="mk-count2"></span><button id="mk-next2" type="button">next &rsaquo;</button></div></div>
<section class="skipped" id="mk-skipped"></section>
<output id="mk-state" hidden></output>
<script type="application/json" id="mk-data">%DATA%</script>
<script nonce="%NONCE%">
(function(){
"use strict";
var D=JSON.parse(document.getElementById("mk-data").textContent);
var I=D.images, C=D.cards, R=D.review||null;
// Review state per card: the keeper (image index) and the unticked members.
var RV=C.map(function(c){return {k:c.k,off:{}}});
function keepOf(idx){return RV[idx].k}
function isRef(c,j){return !!(c.refs&&c.refs.indexOf(j)>=0)}
var $=function(id){return document.getElementById(id)};
function el(tag,cls,text){var e=document.createElement(tag);if(cls)e.className=cls;if(text!=null)e.textContent=String(text);return e}
function kb(n){if(n==null)return "?";var u=["B","KB","MB","GB"],i=0;while(n>=1024&&i<3){n/=1024;i++}return (i?n.toFixed(1):n)+" "+u[i]}
function kindOf(p){return p.r==="local"?"local":(p.k||"")}
// Per-card facts for sorting and filtering, computed once.
var F=C.map(function(c,i){
  var lo=null,hi=null,kinds={},rels={},folders={},bytes=0;
  c.pairs.forEach(function(p){if(p.s!=null){lo=lo==null?p.s:Math.min(lo,p.s);hi=hi==null?p.s:Math.max(hi,p.s)}kinds[kindOf(p)]=1;if(p.k&&p.k!==kindOf(p))kinds[p.k]=1;if(p.rel)rels[p.rel]=1});
  c.m.forEach(function(j){folders[I[j].d.toLowerCase()]=1;if(j!==c.k)bytes+=I[j].s||0});
  return {i:i,size:c.m.length,lo:lo,hi:hi,kinds:kinds,rels:rels,folders:Object.keys(folders),bytes:bytes,first:I[c.m[0]].d+"/"+I[c.m[0]].n};
});
// Kinds beyond the usual three (a label page's "label: cat", a check's "no match").
(function(){var sel=$("mk-kind"),have={};[].forEach.call(sel.options,function(o){have[o.value]=1});
 var all={};F.forEach(function(f){Object.keys(f.kinds).forEach(function(k){if(k&&!have[k])all[k]=1})});
 Object.keys(all).sort().forEach(function(k){var o=el("option",null,k);o.value=k;sel.appendChild(o)});
 // Relations present on the page, closest first (the order of relation.KINDS).
 var ORDER=["exact","same-pixels","resized","crop","edited","recapture","variant","same-scene"],rs={},rsel=$("mk-rel");
 F.forEach(function(f){Object.keys(f.rels).forEach(function(r){rs[r]=1})});
 var rank=function(r){var i=ORDER.indexOf(r);return i<0?99:i};
 Object.keys(rs).sort(function(a,b){return rank(a)-rank(b)||(a<b?-1:1)}).forEach(function(r){var o=el("option",null,r);o.value=r;rsel.appendChild(o)});
 if(D.bytes===false){var b=$("mk-sort").querySelector("option[value=bytes]");if(b)b.remove()}})();
var NOUN=D.noun||"clusters";
(function(){var cnt={};F.forEach(function(f){f.folders.forEach(function(d){cnt[d]=(cnt[d]||0)+1})});
 var dl=$("mk-folders");Object.keys(cnt).sort(function(a,b){return cnt[b]-cnt[a]}).slice(0,300).forEach(function(d){var o=el("option");o.value=d;dl.appendChild(o)})})();
var S={page:0,per:D.per_page||50,view:[]};
$("mk-per").value=String(S.per);
function num(id){var v=$(id).value;return v===""?null:Number(v)}
function compute(){
  var mn=num("mk-min"),mx=num("mk-max"),sz=num("mk-size"),kind=$("mk-kind").value,rel=$("mk-rel").value,fold=$("mk-folder").value.trim().toLowerCase();
  var v=F.filter(function(f){
    if(mn!=null&&(f.lo==null||f.lo<mn))return false;
    if(mx!=null&&(f.lo==null||f.lo>mx))return false;
    if(sz!=null&&f.size<sz)return false;
    if(kind&&!f.kinds[kind])return false;
    if(rel&&!f.rels[rel])return false;
    if(fold&&!f.folders.some(function(d){return d.indexOf(fold)>=0}))return false;
    return true});
  var s=$("mk-sort").value;
  var cmp={size:function(a,b){return b.size-a.size||a.i-b.i},
    weak:function(a,b){return (a.lo==null?2:a.lo)-(b.lo==null?2:b.lo)||a.i-b.i},
    strong:function(a,b){return (b.hi==null?-1:b.hi)-(a.hi==null?-1:a.hi)||a.i-b.i},
    bytes:function(a,b){return b.bytes-a.bytes||a.i-b.i},
    folder:function(a,b){return a.first<b.first?-1:a.first>b.first?1:a.i-b.i}}[s];
  v.sort(cmp);S.view=v;
}
function figure(c,j,toKeep,eager,idx){
  var kp=keepOf(idx),im=I[j],f=el("figure","m"+(j===kp?" keep":"")+(RV[idx].off[j]?" off":""));
  var box=el("div","tb");
  if(im.t){var a=el("a");if(im.u)a.setAttribute("href",im.u);a.setAttribute("target","_blank");a.setAttribute("rel","noopener");
    var img=el("img");img.setAttribute("alt",im.n);img.setAttribute("loading",eager?"eager":"lazy");img.setAttribute("decoding","async");
    if(im.w&&im.h){var r=Math.min(1,166/Math.max(im.w,im.h));img.setAttribute("width",Math.max(1,Math.round(im.w*r)));img.setAttribute("height",Math.max(1,Math.round(im.h*r)))}
    img.setAttribute("src",im.t);a.appendChild(img);box.appendChild(a)}
  else box.appendChild(el("div","err",im.e||"no thumbnail"));
  f.appendChild(box);
  var cap=el("figcaption");
  if(j===kp)cap.appendChild(el("span","badge",D.badge||"keep"));
  if(c.refs&&c.refs.indexOf(j)>=0)cap.appendChild(el("span","badge","reference"));
  var nm=el("span","nm",im.n);nm.setAttribute("title",im.p);cap.appendChild(nm);cap.appendChild(el("br"));
  cap.appendChild(el("span","dim",(im.w?im.w+"\\u00d7"+im.h+" \\u00b7 ":"")+kb(im.s)));cap.appendChild(el("br"));
  cap.appendChild(el("span","fold",im.d||"."));
  if(im.x)Object.keys(im.x).forEach(function(k){var t=el("div","shown",im.x[k]);t.setAttribute("title",k+": "+im.x[k]);cap.appendChild(t)});
  if(toKeep){cap.appendChild(el("br"));var k=kindOf(toKeep);
    cap.appendChild(el("span","sc k-"+k,(toKeep.s!=null?toKeep.s.toFixed(3):"")+" "+k+(toKeep.rel?" \u00b7 "+toKeep.rel:"")))}
  if(R)cap.appendChild(reviewControls(idx,c,j,kp));
  f.appendChild(cap);return f;
}
// Under each image of a dedupe page: move it or not, or make it the keeper.
function reviewControls(idx,c,j,kp){
  var d=el("div","rv");
  if(j===kp){d.appendChild(el("span","dim",kp===c.k?"suggested keeper":"your keeper"));return d}
  if(isRef(c,j)){d.appendChild(el("span","dim","reference: never moved"));return d}
  var lab=el("label"),cb=el("input");cb.type="checkbox";cb.className="mv";cb.checked=!RV[idx].off[j];
  cb.setAttribute("data-card",String(idx));cb.setAttribute("data-img",String(j));
  lab.appendChild(cb);lab.appendChild(document.createTextNode(" move"));d.appendChild(lab);
  var b=el("button","mk-keep","make keeper");b.type="button";
  b.setAttribute("data-card",String(idx));b.setAttribute("data-img",String(j));d.appendChild(b);
  return d;
}
function card(idx,eager){
  var c=C[idx],f=F[idx],art=el("article","card"+(RV[idx].k!==c.k?" changed":""));art.setAttribute("data-card",String(idx));
  var h=el("h2",null,c.t||("Group "+(idx+1)));
  h.appendChild(el("span","meta",c.meta||(f.size+" images \\u00b7 "+(f.lo!=null?"weakest "+f.lo.toFixed(3):"")+" \\u00b7 "+kb(f.bytes)+" in duplicates")));
  if(R){var movable=c.m.filter(function(j){return j!==RV[idx].k&&!isRef(c,j)}),anyOn=movable.some(function(j){return !RV[idx].off[j]});
    if(movable.length){var all=el("button","mk-all",anyOn?"untick all":"tick all");all.type="button";all.setAttribute("data-card",String(idx));all.setAttribute("data-on",anyOn?"0":"1");h.appendChild(all)}}
  art.appendChild(h);
  if(RV[idx].k!==c.k)art.appendChild(el("p","note why","Keeper chosen by you; suggested was "+I[c.k].n+(c.why?" ("+c.why+")":"")));
  else if(c.why)art.appendChild(el("p","note why","Keeper: "+c.why));
  var toKeep={};c.pairs.forEach(function(p){if(p.a===c.k)toKeep[p.b]=p;else if(p.b===c.k)toKeep[p.a]=p});
  var mem=el("div","members");
  c.m.forEach(function(j){mem.appendChild(figure(c,j,toKeep[j],eager,idx))});
  art.appendChild(mem);
  if(c.pairs.length){
    var d=el("details","pairs");var nPic=c.pairs.filter(function(p){return p.pic}).length;
    d.appendChild(el("summary",null,"Pairs ("+c.pairs.length+")"+(nPic?" with "+nPic+" keypoint picture"+(nPic>1?"s":""):"")));
    var t=el("table"),hr=el("tr");["image","matched to","score","kind","evidence"].forEach(function(x){hr.appendChild(el("th",null,x))});t.appendChild(hr);
    c.pairs.forEach(function(p){var tr=el("tr");tr.appendChild(el("td",null,I[p.b].n));tr.appendChild(el("td",null,I[p.a].n));
      tr.appendChild(el("td","sc",p.s!=null?p.s.toFixed(4):""));tr.appendChild(el("td",null,(p.k||"")+(p.r?" / "+p.r:"")+(p.rel?" ("+p.rel+")":"")));
      var ev=[];Object.keys(p.ev||{}).forEach(function(k){var v=p.ev[k];if(k==="rule"||k==="transform")return;ev.push(k+"="+(typeof v==="object"?JSON.stringify(v):v))});
      var td=el("td",null,ev.join(", "));
      if(p.pic){var pd=el("div","pic"),pi=el("img");pi.setAttribute("loading","lazy");pi.setAttribute("alt","matched keypoints");pi.setAttribute("src",p.pic);pd.appendChild(pi);td.appendChild(pd)}
      if(p.note)td.appendChild(el("div","note",p.note));
      tr.appendChild(td);t.appendChild(tr)});
    d.appendChild(t);art.appendChild(d);
  }
  return art;
}
var readyOnce=false;
function render(){
  var pages=Math.max(1,Math.ceil(S.view.length/S.per));S.page=Math.min(Math.max(0,S.page),pages-1);
  var start=S.page*S.per,slice=S.view.slice(start,start+S.per),box=$("mk-cards");
  box.textContent="";
  var frag=document.createDocumentFragment();
  slice.forEach(function(f,n){frag.appendChild(card(f.i,n<(D.eager||8)))});
  if(!slice.length)frag.appendChild(el("div","empty","No "+NOUN+" match these filters."));
  box.appendChild(frag);
  var txt=(S.view.length?(start+1)+"\\u2013"+(start+slice.length):"0")+" of "+S.view.length+" "+NOUN+" \\u00b7 page "+(S.page+1)+"/"+pages;
  $("mk-count").textContent=txt;$("mk-count2").textContent=txt;
  ["mk-prev","mk-prev2"].forEach(function(id){$(id).disabled=S.page===0});
  ["mk-next","mk-next2"].forEach(function(id){$(id).disabled=S.page>=pages-1});
  var imgs=[].slice.call(box.querySelectorAll("img[loading=eager]"));
  var left=imgs.length,loaded=0,failed=0,t0=performance.now();
  function done(ok){if(ok)loaded++;else failed++;if(--left===0)finish()}
  function finish(){
    if(!readyOnce){readyOnce=true;try{performance.mark("mk-ready")}catch(e){}}
    document.documentElement.setAttribute("data-mk-ready","1");
    $("mk-state").textContent=JSON.stringify({total:C.length,filtered:S.view.length,page:S.page+1,pages:pages,shown:slice.length,
      eager_images:imgs.length,loaded:loaded,failed:failed,render_ms:Math.round(performance.now()-t0)});
  }
  document.documentElement.removeAttribute("data-mk-ready");
  if(!left)finish();
  imgs.forEach(function(img){if(img.complete&&img.naturalWidth)done(true);else if(img.complete)done(false);
    else{img.addEventListener("load",function(){done(true)},{once:true});img.addEventListener("error",function(){done(false)},{once:true})}});
}
function refresh(){compute();S.page=0;render()}
["mk-sort","mk-kind","mk-rel","mk-per"].forEach(function(id){$(id).addEventListener("change",function(){S.per=Number($("mk-per").value)||50;refresh()})});
["mk-min","mk-max","mk-size","mk-folder"].forEach(function(id){$(id).addEventListener("input",refresh)});
function go(d){S.page+=d;render();window.scrollTo(0,$("mk-controls").offsetTop)}
["mk-prev","mk-prev2"].forEach(function(id){$(id).addEventListener("click",function(){go(-1)})});
["mk-next","mk-next2"].forEach(function(id){$(id).addEventListener("click",function(){go(1)})});
// Skipped files, with reasons, at the bottom.
var sk=$("mk-skipped");
if(D.skipped.length){sk.appendChild(el("h2",null,"Skipped files ("+D.skipped.length+")"));var ul=el("ul");
  D.skipped.forEach(function(s){var li=el("li");li.appendChild(el("code",null,s.path));li.appendChild(document.createTextNode(" \\u2014 "+s.reason));ul.appendChild(li)});sk.appendChild(ul)}
else sk.appendChild(el("p","note","No files were skipped."));
// The review: what moves, counted in the bar; saved as a file for `matchkit apply`.
function plan(){var mv=0,bytes=0,changed=0,stay=0;
  C.forEach(function(c,i){var k=RV[i].k;if(k!==c.k)changed++;
    c.m.forEach(function(j){if(j===k||isRef(c,j))return;if(RV[i].off[j]){stay++;return}mv++;bytes+=I[j].s||0})});
  return {move:mv,bytes:bytes,changed:changed,stay:stay}}
// Decisions survive a reload of this very page (same files, same clusters).
var KEY=R&&R.key?"matchkit-review:"+R.key:null;
function store(){if(!KEY)return;try{var o={};RV.forEach(function(r,i){if(r.k!==C[i].k||Object.keys(r.off).length)o[i]=r});
  if(Object.keys(o).length)localStorage.setItem(KEY,JSON.stringify(o));else localStorage.removeItem(KEY)}catch(e){}}
function restore(){if(!KEY)return;try{var o=JSON.parse(localStorage.getItem(KEY)||"{}");
  Object.keys(o).forEach(function(i){var r=o[i];if(RV[i]&&C[i].m.indexOf(r.k)>=0){RV[i].k=r.k;RV[i].off=r.off||{}}})}catch(e){}}
function counts(){if(!R)return;store();var p=plan();
  $("mk-review-count").textContent=pl(p.move,"file")+" to move ("+kb(p.bytes)+")"+(p.changed?", "+pl(p.changed,"keeper")+" changed":"")+(p.stay?", "+p.stay+" unticked":"")}
function pl(n,w){return n+" "+w+(n===1?"":"s")}
function review(){
  var P=R.paths,files={};
  function stamp(j){if(R.stamps[j])files[P[j]]=R.stamps[j]}
  var clusters=C.map(function(c,i){var k=RV[i].k,o={keep:P[k],move:[],stay:[],references:[]};stamp(k);
    c.m.forEach(function(j){if(j===k)return;if(isRef(c,j)){o.references.push(P[j]);return}
      if(RV[i].off[j])o.stay.push(P[j]);else{o.move.push(P[j]);stamp(j)}});return o});
  var rep={};Object.keys(R.report).forEach(function(x){rep[x]=R.report[x]});rep.title=D.title;rep.saved=new Date().toISOString();
  return {matchkit_review:1,report:rep,to:$("mk-to").value.trim()||null,clusters:clusters,files:files};
}
function save(){
  var text=JSON.stringify(review(),null,1)+"\\n",a=$("mk-download");
  if(a.href&&a.href.indexOf("blob:")===0)URL.revokeObjectURL(a.href);
  a.href=URL.createObjectURL(new Blob([text],{type:"application/json"}));a.download="matchkit-review.json";a.click();
  var p=plan();$("mk-saved").textContent="saved matchkit-review.json ("+p.move+" to move); then: matchkit apply matchkit-review.json --to DIR";
  return text;
}
if(R){
  $("mk-review").hidden=false;
  $("mk-cards").addEventListener("change",function(e){var t=e.target;if(!t.classList||!t.classList.contains("mv"))return;
    var i=Number(t.getAttribute("data-card")),j=Number(t.getAttribute("data-img"));
    if(t.checked)delete RV[i].off[j];else RV[i].off[j]=1;
    var old=document.querySelector('article[data-card="'+i+'"]');if(old)old.parentNode.replaceChild(card(i,true),old);counts()});
  $("mk-cards").addEventListener("click",function(e){var t=e.target;if(!t.classList||!(t.classList.contains("mk-keep")||t.classList.contains("mk-all")))return;
    var i=Number(t.getAttribute("data-card")),j=Number(t.getAttribute("data-img"));
    if(t.classList.contains("mk-all")){var on=t.getAttribute("data-on")==="1";C[i].m.forEach(function(m){if(on)delete RV[i].off[m];else RV[i].off[m]=1})}
    else{RV[i].k=j;delete RV[i].off[j]}
    var old=document.querySelector('article[data-card="'+i+'"]');if(old)old.parentNode.replaceChild(card(i,true),old);counts()});
  $("mk-save").addEventListener("click",save);
  $("mk-reset").addEventListener("click",function(){RV.forEach(function(r,i){r.k=C[i].k;r.off={}});counts();render()});
  restore();counts();
}
window.mkReport={data:D,state:S,go:go,refresh:refresh,review:review,reviewState:RV,save:save};
compute();render();
})();
</script>
</body></html>
"""
