"""Short alt-text-style captions in 26 languages from a small hand-written vocabulary: seeded, no downloads.

API (stable; the language and quality benchmarks import it):

- ``LANGS``: the ISO 639-1 codes ``caption`` can write; ``SUBJECTS``: the subjects it knows (the photos that
  scikit-image ships, ``chelsea`` being its cat, plus generic ones).
- ``caption(subject, lang, rng, words=(1, 5))``: one caption of a length drawn uniformly from ``words``.
- ``caption_n(subject, lang, rng, n)``: one caption of exactly ``n`` words.
- ``captions(lang, n, seed, words=(1, 5), subjects=SUBJECTS)``: ``n`` labelled ``Caption`` rows.

A word is a whitespace-separated token (``IMG 1234: red car`` has 4); in zh, ja and th, which are written
without spaces, a word is one vocabulary entry. The styles are the web's: a bare noun phrase (``blurry galaxy``),
a filler (``just a rocket``, ``photo of cat``), a camera file prefix (``IMG 1234: red car``), a stock-site
prefix (``stock photo: cat``), a place (``cat on sofa``), a brand with a product (``Nespresso coffee``), an odd
web word (``random spaceman``, ``Avoid rocket``) and keyword lists (``style, astronaut, style``).

A caption in another language never consists only of words that the English vocabulary also has (Dutch
``camera`` alone is English too: such a caption has no single right label), so rejecting it is a fair test.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

SUBJECTS = ("astronaut", "camera", "cat", "chelsea", "coffee", "rocket", "moon", "grass", "gravel", "brick", "text",
            "horse", "galaxy", "coins", "clock", "flower", "car", "dog", "house", "tree")
_NOUN_KEYS = tuple(s for s in SUBJECTS if s != "chelsea")  # chelsea is written with the cat nouns
UNSPACED = frozenset({"zh", "ja", "th"})    # no spaces between words
PLACE_FIRST = frozenset({"zh", "ja", "ko"})  # "沙发上的猫": the place comes before the noun

# Per language: nouns in _NOUN_KEYS order ("a|b" synonyms; ";" between subjects), adjectives, odd web words,
# style/keyword words, fillers, stock-site prefixes, prepositions ("" where the place noun carries its case),
# places, adjective order (pre/post the noun).
_V: dict[str, dict[str, str]] = {
    "en": dict(
        nouns="astronaut|spaceman|space suit; camera|photo camera; cat|kitten; coffee|cup of coffee|espresso; "
              "rocket|space shuttle; moon|full moon; grass|lawn; gravel|pebbles; brick wall|bricks; text|page; "
              "horse|pony; galaxy|galaxies|night sky; coins|money; clock|watch; flower|lily; car|sports car; "
              "dog|puppy; house|home; tree|oak tree",
        adj="red|blue|old|small|big|blurry|beautiful|dark|white|black|green|cute|vintage|bright",
        misc="random|avoid|best|free|cool|funny|amazing|cheap|new", style="style|design|wallpaper|background|art|"
        "icon|illustration|vector", fill="just a|photo of|picture of|image of a|close-up of|a|the|my|view of",
        stock="stock photo:|stock image:|free photo:|photo:", prep="on|in|with|near|under",
        place="sofa|table|desk|street|sky|snow|wall|beach|window|floor", order="pre"),
    "de": dict(
        nouns="Astronaut|Raumfahrer|Raumanzug; Kamera|Fotoapparat; Katze|Kätzchen; Kaffee|Tasse Kaffee; "
              "Rakete|Raumfähre; Mond|Vollmond; Gras|Rasen|Wiese; Kies|Schotter; Ziegelmauer|Backsteine; "
              "Text|Seite|Schrift; Pferd|Pony; Galaxie|Sternenhimmel|Galaxien; Münzen|Geld; Uhr|Wanduhr; "
              "Blume|Lilie; Auto|Sportwagen; Hund|Welpe; Haus|Zuhause; Baum|Eiche",
        adj="rote|blaue|alte|kleine|große|unscharf|schöne|dunkle|weiße|schwarze|grüne|süße|helle",
        misc="zufällig|vermeiden|beste|kostenlos|lustig|toll|günstig|neu", style="Stil|Design|Hintergrund|"
        "Tapete|Kunst|Symbol|Illustration", fill="nur ein|Foto von|Bild von|Bild einer|Nahaufnahme von|ein|"
        "die|mein|Blick auf", stock="Stockfoto:|Archivbild:|Gratis Foto:|Foto:", prep="auf|im|mit|neben|unter",
        place="Sofa|Tisch|Schreibtisch|Straße|Himmel|Schnee|Wand|Strand|Fenster|Boden", order="pre"),
    "fr": dict(
        nouns="astronaute|spationaute|combinaison spatiale; appareil photo|caméra; chat|chaton; café|tasse de "
              "café; fusée|navette spatiale; lune|pleine lune; herbe|pelouse|gazon; gravier|cailloux; mur de "
              "briques|briques; texte|page; cheval|poney; galaxie|ciel étoilé|galaxies; pièces|monnaie; "
              "horloge|montre; fleur|lys; voiture|voiture de sport; chien|chiot; maison|domicile; arbre|chêne",
        adj="rouge|bleu|vieux|petit|grand|flou|beau|sombre|blanc|noir|vert|mignon|lumineux",
        misc="aléatoire|éviter|meilleur|gratuit|drôle|incroyable|pas cher|nouveau", style="style|design|"
        "fond d'écran|arrière-plan|art|icône|illustration", fill="juste un|photo de|image de|image d'un|gros "
        "plan de|un|le|mon|vue de", stock="photo de stock:|image libre:|photo gratuite:|photo:",
        prep="sur|dans|avec|près de|sous", place="canapé|table|bureau|rue|ciel|neige|mur|plage|fenêtre|sol",
        order="post"),
    "es": dict(
        nouns="astronauta|cosmonauta|traje espacial; cámara|cámara de fotos; gato|gatito; café|taza de café; "
              "cohete|transbordador espacial; luna|luna llena; hierba|césped; grava|piedras; pared de "
              "ladrillo|ladrillos; texto|página; caballo|poni; galaxia|cielo estrellado|galaxias; "
              "monedas|dinero; reloj|reloj de pared; flor|lirio; coche|auto deportivo; perro|cachorro; "
              "casa|hogar; árbol|roble",
        adj="rojo|azul|viejo|pequeño|grande|borroso|bonito|oscuro|blanco|negro|verde|lindo|brillante",
        misc="aleatorio|evitar|mejor|gratis|divertido|increíble|barato|nuevo", style="estilo|diseño|fondo de "
        "pantalla|fondo|arte|icono|ilustración", fill="solo un|foto de|imagen de|imagen de un|primer plano "
        "de|un|el|mi|vista de", stock="foto de stock:|imagen gratis:|foto:", prep="en|con|sobre|cerca de|bajo",
        place="sofá|mesa|escritorio|calle|cielo|nieve|pared|playa|ventana|suelo", order="post"),
    "it": dict(
        nouns="astronauta|tuta spaziale; fotocamera|macchina fotografica; gatto|gattino; caffè|tazza di "
              "caffè; razzo|navetta spaziale; luna|luna piena; erba|prato; ghiaia|sassi; muro di "
              "mattoni|mattoni; testo|pagina; cavallo|pony; galassia|cielo stellato|galassie; monete|soldi; "
              "orologio|sveglia; fiore|giglio; auto|macchina sportiva; cane|cucciolo; casa|villetta; "
              "albero|quercia",
        adj="rosso|blu|vecchio|piccolo|grande|sfocato|bello|scuro|bianco|nero|verde|carino|luminoso",
        misc="casuale|evitare|migliore|gratis|divertente|incredibile|economico|nuovo", style="stile|design|"
        "sfondo|arte|icona|illustrazione", fill="solo un|foto di|immagine di|immagine di un|primo piano di|"
        "un|il|il mio|vista di", stock="foto stock:|immagine gratis:|foto:", prep="su|in|con|vicino a|sotto",
        place="divano|tavolo|scrivania|strada|cielo|neve|muro|spiaggia|finestra|pavimento", order="post"),
    "pt": dict(
        nouns="astronauta|traje espacial; câmera|máquina fotográfica; gato|gatinho; café|xícara de café; "
              "foguete|ônibus espacial; lua|lua cheia; grama|relva|gramado; cascalho|pedrinhas; parede de "
              "tijolos|tijolos; texto|página; cavalo|pônei; galáxia|céu estrelado|galáxias; moedas|dinheiro; "
              "relógio|relógio de parede; flor|lírio; carro|carro esportivo; cachorro|cão|filhote; casa|lar; "
              "árvore|carvalho",
        adj="vermelho|azul|velho|pequeno|grande|desfocado|bonito|escuro|branco|preto|verde|fofo|brilhante",
        misc="aleatório|evitar|melhor|grátis|engraçado|incrível|barato|novo", style="estilo|design|papel de "
        "parede|fundo|arte|ícone|ilustração", fill="apenas um|foto de|imagem de|imagem de um|close de|um|o|"
        "meu|vista de", stock="foto de banco:|imagem grátis:|foto:", prep="no|na|com|perto de|sob",
        place="sofá|mesa|escrivaninha|rua|céu|neve|parede|praia|janela|chão", order="post"),
    "nl": dict(
        nouns="astronaut|ruimtevaarder|ruimtepak; camera|fototoestel; kat|poes|kitten; koffie|kopje koffie; "
              "raket|spaceshuttle; maan|volle maan; gras|grasveld|gazon; grind|kiezels; bakstenen "
              "muur|bakstenen; tekst|pagina; paard|pony; sterrenstelsel|sterrenhemel|melkweg; munten|geld; "
              "klok|horloge; bloem|lelie; auto|sportwagen; hond|puppy; huis|woning; boom|eik",
        adj="rode|blauwe|oude|kleine|grote|wazig|mooie|donkere|witte|zwarte|groene|schattig|felle",
        misc="willekeurig|vermijden|beste|gratis|grappig|geweldig|goedkoop|nieuw", style="stijl|ontwerp|"
        "achtergrond|behang|kunst|pictogram|illustratie", fill="gewoon een|foto van|afbeelding van|afbeelding "
        "van een|close-up van|een|de|mijn|uitzicht op", stock="stockfoto:|gratis foto:|foto:",
        prep="op|in|met|bij|onder", place="bank|tafel|bureau|straat|lucht|sneeuw|muur|strand|raam|vloer",
        order="pre"),
    "sv": dict(
        nouns="astronaut|rymdfarare|rymddräkt; kamera|systemkamera; katt|kattunge; kaffe|kopp kaffe; "
              "raket|rymdfärja; måne|fullmåne; gräs|gräsmatta; grus|småsten; tegelvägg|tegelstenar; "
              "text|sida; häst|ponny; galax|stjärnhimmel|galaxer; mynt|pengar; klocka|väggklocka; "
              "blomma|lilja; bil|sportbil; hund|valp; hus|hem; träd|ek",
        adj="röd|blå|gammal|liten|stor|suddig|vacker|mörk|vit|svart|grön|söt|ljus",
        misc="slumpmässig|undvik|bästa|gratis|rolig|fantastisk|billig|ny", style="stil|design|bakgrund|tapet|"
        "konst|ikon|illustration", fill="bara en|foto av|bild av|bild på en|närbild av|en|min|utsikt över",
        stock="stockfoto:|gratis bild:|foto:", prep="på|i|med|vid|under",
        place="soffa|bord|skrivbord|gata|himmel|snö|vägg|strand|fönster|golv", order="pre"),
    "pl": dict(
        nouns="astronauta|kosmonauta|skafander; aparat fotograficzny|kamera; kot|kotek; kawa|filiżanka kawy; "
              "rakieta|prom kosmiczny; księżyc|pełnia księżyca; trawa|trawnik; żwir|kamyki; ceglany mur|cegły; "
              "tekst|strona; koń|kucyk; galaktyka|gwiaździste niebo|galaktyki; monety|pieniądze; "
              "zegar|zegarek; kwiat|lilia; samochód|auto sportowe; pies|szczeniak; dom|domek; drzewo|dąb",
        adj="czerwony|niebieski|stary|mały|duży|rozmyty|piękny|ciemny|biały|czarny|zielony|słodki|jasny",
        misc="losowy|unikaj|najlepszy|darmowy|zabawny|niesamowity|tani|nowy", style="styl|projekt|tapeta|tło|"
        "sztuka|ikona|ilustracja", fill="tylko|zdjęcie|obraz|zbliżenie|mój|widok na",
        stock="zdjęcie stockowe:|darmowe zdjęcie:|zdjęcie:", prep="na|w|z|przy|pod",
        place="kanapie|stole|biurku|ulicy|niebie|śniegu|ścianie|plaży|oknie|podłodze", order="pre"),
    "ro": dict(
        nouns="astronaut|cosmonaut|costum spațial; aparat foto|cameră; pisică|pisicuță; cafea|ceașcă de "
              "cafea; rachetă|navetă spațială; lună|lună plină; iarbă|gazon; pietriș|pietricele; zid de "
              "cărămidă|cărămizi; text|pagină; cal|ponei; galaxie|cer înstelat|galaxii; monede|bani; ceas|ceas "
              "de perete; floare|crin; mașină|mașină sport; câine|cățeluș; casă|locuință; copac|stejar",
        adj="roșu|albastru|vechi|mic|mare|neclar|frumos|întunecat|alb|negru|verde|drăguț|luminos",
        misc="aleatoriu|evitați|cel mai bun|gratuit|amuzant|incredibil|ieftin|nou", style="stil|design|tapet|"
        "fundal|artă|pictogramă|ilustrație", fill="doar un|fotografie cu|imagine cu|imagine a unui|prim-plan "
        "cu|un|o|vedere spre", stock="fotografie de stoc:|imagine gratuită:|foto:", prep="pe|în|cu|lângă|sub",
        place="canapea|masă|birou|stradă|cer|zăpadă|perete|plajă|fereastră|podea", order="post"),
    "cs": dict(
        nouns="astronaut|kosmonaut|skafandr; fotoaparát|kamera; kočka|kotě; káva|šálek kávy; "
              "raketa|raketoplán; měsíc|úplněk; tráva|trávník; štěrk|oblázky; cihlová zeď|cihly; "
              "text|stránka; kůň|poník; galaxie|hvězdná obloha; mince|peníze; hodiny|hodinky; "
              "květina|lilie; auto|sportovní auto; pes|štěně; dům|domov; strom|dub",
        adj="červený|modrý|starý|malý|velký|rozmazaný|krásný|tmavý|bílý|černý|zelený|roztomilý|světlý",
        misc="náhodný|vyhněte se|nejlepší|zdarma|vtipný|úžasný|levný|nový", style="styl|design|tapeta|pozadí|"
        "umění|ikona|ilustrace", fill="jen|fotka|obrázek|detail|můj|pohled na",
        stock="fotobanka:|fotka zdarma:|foto:", prep="na|v|s|u|pod",
        place="gauči|stole|psacím stole|ulici|obloze|sněhu|zdi|pláži|okně|podlaze", order="pre"),
    "sk": dict(
        nouns="astronaut|kozmonaut|skafander; fotoaparát|kamera; mačka|mačiatko; káva|šálka kávy; "
              "raketa|raketoplán; mesiac|spln; tráva|trávnik; štrk|kamienky; tehlová stena|tehly; "
              "text|stránka; kôň|poník; galaxia|hviezdna obloha; mince|peniaze; hodiny|hodinky; kvet|ľalia; "
              "auto|športové auto; pes|šteňa; dom|domov; strom|dub",
        adj="červený|modrý|starý|malý|veľký|rozmazaný|krásny|tmavý|biely|čierny|zelený|roztomilý|svetlý",
        misc="náhodný|vyhnite sa|najlepší|zadarmo|vtipný|úžasný|lacný|nový", style="štýl|dizajn|tapeta|"
        "pozadie|umenie|ikona|ilustrácia", fill="len|fotka|obrázok|detail|môj|pohľad na",
        stock="fotobanka:|fotka zadarmo:|foto:", prep="na|v|s|pri|pod",
        place="gauči|stole|písacom stole|ulici|oblohe|snehu|stene|pláži|okne|podlahe", order="pre"),
    "fi": dict(
        nouns="astronautti|avaruuspuku; kamera|valokuvauskamera; kissa|kissanpentu; kahvi|kahvikuppi; "
              "raketti|avaruussukkula; kuu|täysikuu; ruoho|nurmikko; sora|pikkukivet; tiiliseinä|tiilet; "
              "teksti|sivu; hevonen|poni; galaksi|tähtitaivas|galaksit; kolikot|rahaa; kello|seinäkello; "
              "kukka|lilja; auto|urheiluauto; koira|koiranpentu; talo|koti; puu|tammi",
        adj="punainen|sininen|vanha|pieni|iso|sumea|kaunis|tumma|valkoinen|musta|vihreä|söpö|kirkas",
        misc="satunnainen|vältä|paras|ilmainen|hauska|upea|halpa|uusi", style="tyyli|muotoilu|taustakuva|"
        "tausta|taide|kuvake|kuvitus", fill="vain|kuva|valokuva|lähikuva|minun|näkymä",
        stock="kuvapankki:|ilmainen kuva:|kuva:", prep="",
        place="sohvalla|pöydällä|kadulla|taivaalla|lumessa|seinällä|rannalla|ikkunassa|lattialla", order="pre"),
    "et": dict(
        nouns="astronaut|kosmonaut|skafander; kaamera|fotoaparaat; kass|kassipoeg; kohv|tass kohvi; "
              "rakett|kosmosesüstik; kuu|täiskuu; rohi|muru; kruus|kivikesed; telliskivisein|tellised; "
              "tekst|lehekülg; hobune|poni; galaktika|tähistaevas|galaktikad; mündid|raha; kell|seinakell; "
              "lill|liilia; auto|sportauto; koer|kutsikas; maja|kodu; puu|tamm",
        adj="punane|sinine|vana|väike|suur|udune|ilus|tume|valge|must|roheline|armas|hele",
        misc="juhuslik|väldi|parim|tasuta|naljakas|imeline|odav|uus", style="stiil|disain|taustapilt|taust|"
        "kunst|ikoon|illustratsioon", fill="lihtsalt|foto|pilt|lähivõte|minu|vaade",
        stock="fotopank:|tasuta pilt:|foto:", prep="",
        place="diivanil|laual|tänaval|taevas|lumes|seinal|rannas|aknal|põrandal", order="pre"),
    "tr": dict(
        nouns="astronot|uzay giysisi; fotoğraf makinesi|kamera; kedi|yavru kedi; kahve|fincan kahve; "
              "roket|uzay mekiği; ay|dolunay; çimen|çim; çakıl|çakıl taşları; tuğla duvar|tuğlalar; "
              "metin|sayfa; at|midilli; galaksi|yıldızlı gökyüzü|galaksiler; madeni paralar|para; saat|duvar "
              "saati; çiçek|zambak; araba|spor araba; köpek|yavru köpek; ev|yuva; ağaç|meşe",
        adj="kırmızı|mavi|eski|küçük|büyük|bulanık|güzel|karanlık|beyaz|siyah|yeşil|sevimli|parlak",
        misc="rastgele|kaçının|en iyi|ücretsiz|komik|harika|ucuz|yeni", style="stil|tasarım|duvar kağıdı|"
        "arka plan|sanat|simge|illüstrasyon", fill="sadece bir|bir|fotoğraf:|resim:|yakın çekim|benim|manzara",
        stock="stok fotoğraf:|ücretsiz resim:|foto:", prep="",
        place="kanepede|masada|sokakta|gökyüzünde|karda|duvarda|plajda|pencerede|yerde", order="pre"),
    "id": dict(
        nouns="astronot|pakaian antariksa; kamera|kamera foto; kucing|anak kucing; kopi|secangkir kopi; "
              "roket|pesawat ulang alik; bulan|bulan purnama; rumput|halaman rumput; kerikil|batu kerikil; "
              "dinding bata|batu bata|bata; teks|halaman; kuda|kuda poni; galaksi|langit berbintang; koin|uang; "
              "jam|jam dinding; bunga|bunga lili; mobil|mobil sport; anjing|anak anjing; rumah|hunian; "
              "pohon|pohon ek",
        adj="merah|biru|tua|kecil|besar|buram|cantik|gelap|putih|hitam|hijau|lucu|terang",
        misc="acak|hindari|terbaik|gratis|keren|murah|baru", style="gaya|desain|wallpaper|latar belakang|seni|"
        "ikon|ilustrasi", fill="hanya sebuah|foto|gambar|gambar sebuah|foto close up|sebuah|seekor|pemandangan",
        stock="foto stok:|gambar gratis:|foto:", prep="di atas|di|dengan|dekat|di bawah",
        place="sofa|meja|jalan|langit|salju|dinding|pantai|jendela|lantai", order="post"),
    "ru": dict(
        nouns="космонавт|астронавт|скафандр; фотоаппарат|камера; кошка|котёнок|кот; кофе|чашка кофе; "
              "ракета|космический челнок; луна|полнолуние; трава|газон; гравий|галька; кирпичная "
              "стена|кирпичи; текст|страница; лошадь|пони; галактика|звёздное небо|галактики; "
              "монеты|деньги; часы|настенные часы; цветок|лилия; машина|спортивный автомобиль; "
              "собака|щенок; дом|домик; дерево|дуб",
        adj="красный|синий|старый|маленький|большой|размытый|красивый|тёмный|белый|чёрный|зелёный|милый|яркий",
        misc="случайный|избегайте|лучший|бесплатно|смешной|потрясающий|дешёвый|новый", style="стиль|дизайн|"
        "обои|фон|арт|иконка|иллюстрация", fill="просто|фото|картинка|крупный план|мой|вид на",
        stock="стоковое фото:|бесплатное фото:|фото:", prep="на|в|с|у|под",
        place="диване|столе|улице|небе|снегу|стене|пляже|окне|полу", order="pre"),
    "uk": dict(
        nouns="космонавт|астронавт|скафандр; фотоапарат|камера; кішка|кошеня|кіт; кава|чашка кави; "
              "ракета|космічний човник; місяць|повня; трава|газон; гравій|галька; цегляна стіна|цеглини; "
              "текст|сторінка; кінь|поні; галактика|зоряне небо|галактики; монети|гроші; годинник|настінний "
              "годинник; квітка|лілія; автомобіль|спортивне авто; собака|цуценя; будинок|хатинка; дерево|дуб",
        adj="червоний|синій|старий|маленький|великий|розмитий|гарний|темний|білий|чорний|зелений|милий|"
            "яскравий",
        misc="випадковий|уникайте|найкращий|безкоштовно|смішний|чудовий|дешевий|новий", style="стиль|дизайн|"
        "шпалери|фон|мистецтво|іконка|ілюстрація", fill="просто|фото|зображення|великий план|мій|вид на",
        stock="стокове фото:|безкоштовне фото:|фото:", prep="на|у|з|біля|під",
        place="дивані|столі|вулиці|небі|снігу|стіні|пляжі|вікні|підлозі", order="pre"),
    "el": dict(
        nouns="αστροναύτης|διαστημική στολή; φωτογραφική μηχανή|κάμερα; γάτα|γατάκι; καφές|φλιτζάνι καφέ; "
              "πύραυλος|διαστημικό λεωφορείο; φεγγάρι|πανσέληνος; γρασίδι|χλοοτάπητας; χαλίκι|βότσαλα; "
              "τοίχος από τούβλα|τούβλα; κείμενο|σελίδα; άλογο|πόνι; γαλαξίας|έναστρος ουρανός; "
              "κέρματα|χρήματα; ρολόι|ρολόι τοίχου; λουλούδι|κρίνος; αυτοκίνητο|σπορ αυτοκίνητο; "
              "σκύλος|κουτάβι; σπίτι|κατοικία; δέντρο|βελανιδιά",
        adj="κόκκινο|μπλε|παλιό|μικρό|μεγάλο|θολό|όμορφο|σκοτεινό|λευκό|μαύρο|πράσινο|χαριτωμένο|φωτεινό",
        misc="τυχαίο|αποφύγετε|καλύτερο|δωρεάν|αστείο|καταπληκτικό|φθηνό|νέο", style="στυλ|σχέδιο|ταπετσαρία|"
        "φόντο|τέχνη|εικονίδιο|εικονογράφηση", fill="απλά ένα|φωτογραφία|εικόνα|κοντινό πλάνο|το|μου|θέα",
        stock="φωτογραφία αρχείου:|δωρεάν φωτογραφία:|φωτο:", prep="στον|σε|με|κοντά σε|κάτω από",
        place="καναπέ|τραπέζι|γραφείο|δρόμο|ουρανό|χιόνι|τοίχο|παραλία|παράθυρο|πάτωμα", order="pre"),
    "ar": dict(
        nouns="رائد فضاء|فضائي|بدلة فضاء; كاميرا|آلة تصوير; قطة|هريرة; قهوة|فنجان قهوة; صاروخ|مكوك فضائي; قمر|بدر; "
              "عشب|مرج; حصى|حجارة صغيرة; جدار من الطوب|طوب; نص|صفحة; حصان|مهر; مجرة|سماء مرصعة بالنجوم; "
              "عملات معدنية|نقود; ساعة|ساعة حائط; زهرة|زنبق; سيارة|سيارة رياضية; كلب|جرو; منزل|بيت; شجرة|بلوط",
        adj="أحمر|أزرق|قديم|صغير|كبير|ضبابي|جميل|داكن|أبيض|أسود|أخضر|لطيف|مشرق",
        misc="عشوائي|تجنب|أفضل|مجاني|مضحك|رائع|رخيص|جديد", style="نمط|تصميم|خلفية|فن|أيقونة|رسم توضيحي",
        fill="مجرد|صورة|صورة ل|لقطة قريبة|منظر", stock="صورة مخزون:|صورة مجانية:|صورة:",
        prep="على|في|مع|بجانب|تحت", place="الأريكة|الطاولة|المكتب|الشارع|السماء|الثلج|الجدار|الشاطئ|النافذة|الأرض",
        order="post"),
    "he": dict(
        nouns="אסטרונאוט|חליפת חלל; מצלמה|מצלמת צילום; חתול|גור חתולים; קפה|כוס קפה; טיל|מעבורת חלל; "
              "ירח|ירח מלא; דשא|מדשאה; חצץ|חלוקי נחל; קיר לבנים|לבנים; טקסט|עמוד; סוס|פוני; גלקסיה|שמיים "
              "זרועי כוכבים; מטבעות|כסף; שעון|שעון קיר; פרח|שושן; מכונית|מכונית ספורט; כלב|גור כלבים; "
              "בית|דירה; עץ|אלון",
        adj="אדום|כחול|ישן|קטן|גדול|מטושטש|יפה|כהה|לבן|שחור|ירוק|חמוד|בהיר",
        misc="אקראי|הימנעו|הכי טוב|חינם|מצחיק|מדהים|זול|חדש", style="סגנון|עיצוב|טפט|רקע|אמנות|סמל|איור",
        fill="רק|תמונה של|צילום של|תקריב של|נוף של", stock="תמונת סטוק:|תמונה חינם:|תמונה:",
        prep="על|ב|עם|ליד|מתחת", place="הספה|השולחן|הרחוב|השמיים|השלג|הקיר|החוף|החלון|הרצפה", order="post"),
    "hi": dict(
        nouns="अंतरिक्ष यात्री|अंतरिक्षयात्री|स्पेस सूट; कैमरा; बिल्ली|बिल्ली का बच्चा; कॉफी|कॉफी का कप; रॉकेट|अंतरिक्ष यान; "
              "चाँद|पूर्णिमा; घास|लॉन; बजरी|कंकड़; ईंट की दीवार|ईंटें; पाठ|पन्ना; घोड़ा|टट्टू; आकाशगंगा|तारों भरा "
              "आसमान; सिक्के|पैसे; घड़ी|दीवार घड़ी; फूल|लिली; कार|स्पोर्ट्स कार; कुत्ता|पिल्ला; घर|मकान; पेड़|ओक का पेड़",
        adj="लाल|नीला|पुराना|छोटा|बड़ा|धुंधला|सुंदर|गहरा|सफ़ेद|काला|हरा|प्यारा|चमकीला",
        misc="रैंडम|बचें|सबसे अच्छा|मुफ्त|मज़ेदार|शानदार|सस्ता|नया", style="शैली|डिज़ाइन|वॉलपेपर|पृष्ठभूमि|कला|"
        "आइकन|चित्रण", fill="बस एक|तस्वीर:|फोटो:|क्लोज़अप|मेरा|दृश्य", stock="स्टॉक फोटो:|मुफ्त फोटो:|फोटो:",
        prep="", place="सोफे पर|मेज पर|सड़क पर|आसमान में|बर्फ में|दीवार पर|समुद्र तट पर|खिड़की पर|फर्श पर",
        order="pre"),
    "zh": dict(
        nouns="宇航员|航天员|宇航服; 相机|照相机; 猫|小猫; 咖啡|一杯咖啡; 火箭|航天飞机; 月亮|满月; 草|草坪; 碎石|石子; "
              "砖墙|砖块; 文字|页面; 马|小马; 星系|星空|银河; 硬币|钱; 时钟|手表; 花|百合; 汽车|跑车; 狗|小狗; "
              "房子|住宅; 树|橡树",
        adj="红色的|蓝色的|旧|小|大|模糊的|漂亮的|黑暗的|白色的|黑色的|绿色的|可爱的|明亮的",
        misc="随机|避免|最好的|免费|有趣的|惊人的|便宜的|新", style="风格|设计|壁纸|背景|艺术|图标|插图",
        fill="只是一只|照片|图片|特写|我的|风景", stock="图库照片：|免费图片：|照片：", prep="",
        place="沙发上的|桌子上的|街上的|天空中的|雪地里的|墙上的|海滩上的|窗户上的|地板上的", order="pre"),
    "ja": dict(
        nouns="宇宙飛行士|宇宙服; カメラ|一眼レフ; 猫|子猫|ねこ; コーヒー|コーヒーカップ; ロケット|スペースシャトル; 月|満月; "
              "草|芝生; 砂利|小石; レンガの壁|レンガ; テキスト|ページ; 馬|ポニー; 銀河|星空|天の川; 硬貨|お金; "
              "時計|掛け時計; 花|ユリ; 車|スポーツカー; 犬|子犬; 家|住宅; 木|樫の木",
        adj="赤い|青い|古い|小さな|大きな|ぼやけた|美しい|暗い|白い|黒い|緑の|かわいい|明るい",
        misc="ランダム|避ける|最高の|無料|面白い|すごい|安い|新しい", style="スタイル|デザイン|壁紙|背景|アート|アイコン|"
        "イラスト", fill="ただの|写真|画像|クローズアップ|私の|風景", stock="ストックフォト：|フリー素材：|写真：", prep="",
        place="ソファの上の|テーブルの上の|道の|空の|雪の中の|壁の|ビーチの|窓辺の|床の", order="pre"),
    "ko": dict(
        nouns="우주비행사|우주복; 카메라|사진기; 고양이|아기 고양이; 커피|커피 한 잔; 로켓|우주왕복선; 달|보름달; "
              "풀|잔디밭; 자갈|조약돌; 벽돌 벽|벽돌; 텍스트|페이지; 말|조랑말; 은하|은하계|별이 빛나는 하늘; 동전|돈; "
              "시계|벽시계; 꽃|백합; 자동차|스포츠카; 개|강아지; 집|주택; 나무|참나무",
        adj="빨간|파란|오래된|작은|큰|흐릿한|아름다운|어두운|하얀|검은|초록색|귀여운|밝은",
        misc="랜덤|피하세요|최고의|무료|재미있는|놀라운|저렴한|새로운", style="스타일|디자인|배경화면|배경|아트|아이콘|"
        "일러스트", fill="그냥|사진|이미지|클로즈업|나의|풍경", stock="스톡 사진:|무료 이미지:|사진:", prep="",
        place="소파 위의|테이블 위의|거리의|하늘의|눈 속의|벽의|해변의|창가의|바닥의", order="pre"),
    "th": dict(
        nouns="นักบินอวกาศ|ชุดอวกาศ; กล้อง|กล้องถ่ายรูป; แมว|ลูกแมว; กาแฟ|กาแฟหนึ่งถ้วย; จรวด|กระสวยอวกาศ; "
              "ดวงจันทร์|พระจันทร์เต็มดวง; หญ้า|สนามหญ้า; กรวด|ก้อนหิน; กำแพงอิฐ|อิฐ; ข้อความ|หน้ากระดาษ; ม้า|ม้าแคระ; "
              "กาแล็กซี|ท้องฟ้ายามค่ำคืน; เหรียญ|เงิน; นาฬิกา|นาฬิกาแขวน; ดอกไม้|ดอกลิลลี่; รถยนต์|รถสปอร์ต; "
              "สุนัข|ลูกสุนัข; บ้าน|ที่อยู่อาศัย; ต้นไม้|ต้นโอ๊ก",
        adj="สีแดง|สีน้ำเงิน|เก่า|เล็ก|ใหญ่|เบลอ|สวย|มืด|สีขาว|สีดำ|สีเขียว|น่ารัก|สว่าง",
        misc="สุ่ม|หลีกเลี่ยง|ดีที่สุด|ฟรี|ตลก|สุดยอด|ถูก|ใหม่", style="สไตล์|ดีไซน์|วอลเปเปอร์|พื้นหลัง|ศิลปะ|"
        "ไอคอน|ภาพประกอบ", fill="แค่|ภาพ|รูปภาพ|ภาพระยะใกล้|ของฉัน|วิว", stock="ภาพสต็อก:|ภาพฟรี:|ภาพ:",
        prep="บน|ใน|กับ|ใกล้|ใต้", place="โซฟา|โต๊ะ|ถนน|ท้องฟ้า|หิมะ|กำแพง|ชายหาด|หน้าต่าง|พื้น", order="post"),
}
LANGS: tuple[str, ...] = tuple(_V)

# Language-neutral tokens: brands and models per subject (shops where no brand fits), camera file names.
_BRANDS = {"camera": "Canon EOS 5D|Nikon D750|Sony A7|Leica|Fujifilm X100", "coffee": "Nespresso|Lavazza|Starbucks|"
           "illy", "car": "Toyota Corolla|BMW X5|Ford Focus|Tesla|VW Golf", "rocket": "SpaceX Falcon 9|Saturn V|"
           "Apollo 11|NASA", "astronaut": "NASA|Apollo 11|ISS", "galaxy": "Hubble|NASA Hubble|JWST",
           "moon": "Apollo 11|NASA", "clock": "Casio|Seiko|IKEA", "house": "IKEA|Airbnb", "_": "eBay|Etsy|Amazon|"
           "Pinterest|Shutterstock|Getty Images"}
_FILES = ("IMG {n}:", "IMG_{n}", "DSC{n}", "DSC_{n}.JPG", "P{n}", "photo {n}")


@dataclass(frozen=True)
class Caption:
    text: str
    lang: str
    subject: str
    words: int


def _split(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split("|") if x.strip())


def _load(lang: str) -> dict:
    raw = _V[lang]
    nouns = [_split(x) for x in raw["nouns"].split(";")]
    if len(nouns) != len(_NOUN_KEYS):
        raise ValueError(f"alttext: {lang} has {len(nouns)} noun groups, want {len(_NOUN_KEYS)}")
    v = {k: _split(raw[k]) for k in ("adj", "misc", "style", "fill", "stock", "place")}
    v["prep"] = _split(raw["prep"]) or ("",)
    v["nouns"] = dict(zip(_NOUN_KEYS, nouns))
    v["nouns"]["chelsea"] = v["nouns"]["cat"]
    v["order"] = raw["order"]
    return v


_VOCAB = {lang: _load(lang) for lang in LANGS}
_TOKEN = re.compile(r"[^\W\d_]+")
EN_WORDS = frozenset(w.lower() for part in _V["en"].values() for w in _TOKEN.findall(part))


def _size(lang: str, unit: str) -> int:
    """Words in one vocabulary entry: one in unspaced languages, else its whitespace tokens."""
    return 1 if lang in UNSPACED else len(unit.split())


def _np(v: dict, lang: str, subject: str, rng: random.Random, k: int) -> list[str] | None:
    """A noun phrase of exactly k words (noun + up to 3 adjectives), or None when k cannot be met."""
    if k < 1:
        return None
    nouns = [n for n in v["nouns"][subject] if _size(lang, n) <= k]
    if subject == "chelsea" and k >= 2 and rng.random() < 0.5:
        rest = _np(v, lang, "cat", rng, k - 1)
        return None if rest is None else ["Chelsea"] + rest
    if not nouns:
        return None
    noun = rng.choice(nouns)
    n_adj = k - _size(lang, noun)
    if n_adj > 3:
        return None
    adjs = rng.sample(v["adj"], n_adj)
    return [noun] + adjs if v["order"] == "post" else adjs + [noun]


def _head(v: dict, lang: str, subject: str, rng: random.Random, n: int, head: list[str]) -> list[str] | None:
    size = sum(_size(lang, h) for h in head)
    rest = _np(v, lang, subject, rng, n - size)
    return None if rest is None else head + rest


def _style(name: str, v: dict, lang: str, subject: str, rng: random.Random, n: int) -> list[str] | None:
    """The units of one caption in style `name`, or None when that style cannot make n words."""
    if name == "bare":
        return _np(v, lang, subject, rng, n)
    if name == "fill":
        return _head(v, lang, subject, rng, n, [rng.choice(v["fill"])])
    if name == "misc":
        return _head(v, lang, subject, rng, n, [rng.choice(v["misc"])])
    if name == "stock":
        return _head(v, lang, subject, rng, n, [rng.choice(v["stock"])])
    if name == "file":
        f = rng.choice(_FILES).format(n=rng.randint(1, 9999)).split()
        rest = _np(v, lang, subject, rng, n - len(f))
        return None if rest is None else [" ".join(f)] + rest  # the file name is a neutral unit of len(f) words
    if name == "brand":
        brand = rng.choice(_split(_BRANDS.get(subject, _BRANDS["_"])))
        rest = _np(v, lang, subject, rng, n - len(brand.split()))
        return None if rest is None else [brand] + rest
    if name == "place":
        prep, place = rng.choice(v["prep"]), rng.choice(v["place"])
        tail = [x for x in (prep, place) if x]
        rest = _np(v, lang, subject, rng, n - sum(_size(lang, t) for t in tail))
        if rest is None:
            return None
        return tail + rest if lang in PLACE_FIRST else rest + tail
    if name == "keywords":
        if n < 2:
            return None
        noun = rng.choice([x for x in v["nouns"][subject] if _size(lang, x) == 1] or ["?"])
        items = [rng.choice(v["style"] + v["adj"]) for _ in range(n - 1)]
        items.insert(rng.randrange(n), noun)
        if "?" in items or any(_size(lang, x) != 1 for x in items):
            return None
        return [", ".join(items) if lang not in UNSPACED else "、".join(items)]
    raise ValueError(name)


STYLES = ("bare", "bare", "fill", "misc", "stock", "file", "brand", "place", "keywords")
_NEUTRAL = re.compile(r"^(?:IMG|DSC|P|photo)[\s_\d]|^(?:Chelsea|" + "|".join(
    re.escape(b) for s in _BRANDS.values() for b in _split(s)) + r")$")


def _render(lang: str, units: list[str], rng: random.Random) -> str:
    sep = "" if lang in UNSPACED else " "
    out = []
    for u in units:  # neutral units (file names, brands) keep a space around them in every language
        if out and (sep or _NEUTRAL.match(u) or _NEUTRAL.match(out[-1])):
            out.append(" ")
        out.append(u)
    s = "".join(out)
    r = rng.random()
    if r < 0.3 and s[:1].islower():
        s = s[0].upper() + s[1:]
    elif r < 0.4 and lang not in UNSPACED:
        s = s.title()
    elif r < 0.5:
        s = s.lower()
    return s


def _all_english(text: str) -> bool:
    words = [w.lower() for w in _TOKEN.findall(_NEUTRAL.sub("", text))]
    words = [w for w in words if w not in ("img", "dsc", "chelsea")]
    return bool(words) and all(w in EN_WORDS for w in words)


def caption_n(subject: str, lang: str, rng: random.Random, n: int) -> str:
    """One caption about `subject` in `lang` with exactly n words (1 <= n <= 6)."""
    if lang not in _VOCAB:
        raise ValueError(f"alttext: no vocabulary for language {lang!r}; have {', '.join(LANGS)}")
    if subject not in SUBJECTS:
        raise ValueError(f"alttext: unknown subject {subject!r}; have {', '.join(SUBJECTS)}")
    v = _VOCAB[lang]
    for _ in range(200):
        units = _style(rng.choice(STYLES), v, lang, subject, rng, n)
        if not units:
            continue
        text = _render(lang, units, rng)
        if lang == "en" or not _all_english(text):
            return text
    raise ValueError(f"alttext: cannot write {n} words about {subject!r} in {lang}")


def caption(subject: str, lang: str, rng: random.Random, words: tuple[int, int] = (1, 5)) -> str:
    """One caption about `subject` in `lang`, its length drawn uniformly from words=(min, max)."""
    return caption_n(subject, lang, rng, rng.randint(*words))


def captions(lang: str, n: int, seed: int = 0, words: tuple[int, int] = (1, 5),
             subjects: tuple[str, ...] = SUBJECTS) -> list[Caption]:
    """n seeded captions in `lang`, subjects in turn, lengths uniform over `words`."""
    rng = random.Random(f"{seed}:{lang}")
    out = []
    for i in range(n):
        k = rng.randint(*words)
        subject = subjects[i % len(subjects)]
        out.append(Caption(caption_n(subject, lang, rng, k), lang, subject, k))
    return out


__all__ = ["LANGS", "SUBJECTS", "STYLES", "Caption", "caption", "caption_n", "captions", "EN_WORDS"]
