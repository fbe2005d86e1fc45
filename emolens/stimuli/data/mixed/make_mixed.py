"""Compose the mixed non-story text collection (mixed.jsonl) from hand-written templates.

Run from the repository root: ``python emolens/stimuli/data/mixed/make_mixed.py``. Deterministic
(seed 0). Every text is one of nine genres; the templates and slot fillers below were written by
hand for emolens. Some texts carry feeling the way ordinary text does (a complaint, a flood
report, a thank-you note); none is an emotion story, and most are flat (code, instructions,
listings). Used by ``emolens scan`` to find each direction's max-activating contexts.
"""
import json
import random
from pathlib import Path

R = random.Random(0)
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivo", "Jules", "Kofi",
         "Lena", "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tomas"]
TOWNS = ["Riverton", "Ashford", "Millbrook", "Port Ellis", "Cedar Falls", "Northgate",
         "Lindholm", "Baywater", "Greystone", "Old Harbor"]
ITEMS = ["kettle", "desk lamp", "backpack", "blender", "router", "office chair", "rain jacket",
         "phone case", "coffee grinder", "bike lock", "air purifier", "headphones"]
FOODS = ["lentil soup", "banana bread", "tomato pasta", "vegetable curry", "pancakes",
         "roast chicken", "rice salad", "apple crumble", "fried rice", "bean chili"]
TOPICS = ["the budget for next quarter", "the new onboarding checklist", "the server migration",
          "the spring fair", "parking at the office", "the library opening hours",
          "the website redesign", "the delivery schedule", "the volunteer rota"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

def pick(xs):
    return R.choice(xs)

def prose():
    n, t = pick(NAMES), pick(TOWNS)
    return pick([
        f"On {pick(WEEKDAYS)} mornings {n} walks to the bakery on the corner of {t}'s main street, buys two rolls and reads the paper on the bench outside before work.",
        f"The bus from {t} was twenty minutes late again, so {n} called ahead and asked the shop to keep the {pick(ITEMS)} aside until six.",
        f"{n} spent the afternoon sorting old photographs into boxes labelled by year; most were of birthdays, a few of a trip to {pick(TOWNS)} nobody remembered taking.",
        f"The neighbours in {t} finally agreed on a date to repaint the fence. {n} offered to bring brushes, and someone else promised lemonade.",
        f"After the move, {n} found that the new flat got sun only in the evening, so the plants went on the west windowsill and the desk went by the door.",
        f"Our street has a small library box where people leave books. This week it held a cookbook, two thrillers and a guide to birds of {t}.",
        f"{n} finished the marathon in just under four hours, then sat on the kerb for a long time, grinning at nothing in particular.",
        f"My grandmother kept every letter she ever received in a tin on top of the wardrobe. When we opened it after the funeral, {n} read the first one aloud and had to stop halfway.",
        f"The cat has decided that the laundry basket is hers. {n} has stopped arguing and now folds the towels on the kitchen table.",
        f"It rained all weekend in {t}, so we played cards, burned the toast twice and watched an old film about a lighthouse keeper.",
        f"{n} got the job. The phone call came at lunch, and the rest of the day went by in a blur of messages from friends.",
        f"The train was packed and someone's dog kept leaning against {n}'s leg, warm and heavy, all the way to {pick(TOWNS)}.",
    ])

def instructions():
    item, food = pick(ITEMS), pick(FOODS)
    return pick([
        f"To reset the {item}, unplug it, hold the power button for ten seconds, plug it back in and wait until the light turns green.",
        f"How to make {food}: prepare all ingredients first, heat the pan on medium, cook in stages and taste for salt before serving. Serves four.",
        f"Step 1: open Settings. Step 2: choose Accounts. Step 3: select 'Add account' and follow the prompts. Step 4: restart the app.",
        f"Before assembling the {item}, check that every part on the list is in the box. Tighten the screws by hand first, then a quarter turn with the key.",
        f"To change a bicycle tyre, release the brake, remove the wheel, lever off one side of the tyre, replace the tube and inflate to the pressure printed on the sidewall.",
        "Wash your hands with soap for at least twenty seconds, rinse under running water and dry them with a clean towel.",
        f"Preheat the oven to 180 C. Grease a loaf tin. Mix the dry ingredients, add the wet ones, stir until just combined and bake for 50 minutes for the {food}.",
        "If the printer shows error E04, open the front cover, remove any jammed paper gently, close the cover and press the resume button.",
        f"Water the seedlings every second day, keep them out of direct midday sun for the first week and move them outside once nights stay above 10 C.",
        "To file the expense claim, attach a photo of each receipt, choose the project code from the list and submit before the last working day of the month.",
        f"Emergency procedure: if the alarm sounds, leave by the nearest exit, do not use the lifts and gather at the car park on {pick(TOWNS)} Road.",
    ])

def code():
    var = pick(["items", "rows", "users", "orders", "values", "records"])
    fn = pick(["load_config", "parse_date", "merge_lists", "count_words", "retry_request", "normalise"])
    return pick([
        f"def {fn}(path):\n    with open(path) as f:\n        return [line.strip() for line in f if line.strip()]",
        f"for i, x in enumerate({var}):\n    if x is None:\n        continue\n    total += x * weights[i]",
        f"SELECT name, COUNT(*) AS n FROM {var} WHERE created_at > '2024-01-01' GROUP BY name ORDER BY n DESC LIMIT 10;",
        f"const {fn} = async (url) => {{\n  const res = await fetch(url);\n  if (!res.ok) throw new Error(`HTTP ${{res.status}}`);\n  return res.json();\n}};",
        f"git checkout -b fix/{fn.replace('_', '-')}\ngit add -p\ngit commit -m \"Fix off-by-one in {fn}\"\ngit push origin HEAD",
        f"class Cache:\n    def __init__(self, size=128):\n        self.size = size\n        self.data = {{}}\n\n    def get(self, key, default=None):\n        return self.data.get(key, default)",
        f"# TODO: handle the empty case\nif not {var}:\n    raise ValueError(\"{var} must not be empty\")",
        f"docker run --rm -v $(pwd):/app -w /app python:3.11 python -m pytest -q tests/test_{fn}.py",
        f"try:\n    result = {fn}(data)\nexcept KeyError as e:\n    log.warning(\"missing key %s\", e)\n    result = None",
        f"import numpy as np\n\nx = np.linspace(0, 1, 100)\ny = np.sin(2 * np.pi * x)\nprint(y.mean(), y.std())",
        f"<ul>\n  <li><a href=\"/home\">Home</a></li>\n  <li><a href=\"/{var}\">{var.title()}</a></li>\n</ul>",
    ])

def news():
    t, n = pick(TOWNS), pick(NAMES)
    k = R.randint(2, 90)
    return pick([
        f"{t} council approved a plan on {pick(WEEKDAYS)} to add {k} new bus stops and extend evening services on three routes from next spring.",
        f"Floodwater forced {k * 10} residents of {t} from their homes overnight. Rescue crews worked until dawn, and two people remain missing.",
        f"The local team beat its rivals 3-1 in front of a record crowd in {t}; fans stayed on the pitch long after the final whistle.",
        f"Police in {t} are asking for witnesses after a lorry overturned on the ring road early this morning. No one was seriously hurt.",
        f"A new report finds that average rents in {t} rose {k % 15 + 2} percent last year, outpacing wages for the fourth year running.",
        f"The factory in {t} will close in March, the company confirmed, putting {k * 5} jobs at risk. Unions called the decision a betrayal.",
        f"Scientists at the {t} institute have mapped a previously unknown cave system beneath the old quarry, with passages over {k} metres long.",
        f"Shares fell sharply after the firm cut its forecast, its second warning this year. Analysts said investors had lost patience.",
        f"Volunteers planted {k * 20} trees along the river in {t} at the weekend, part of a project to reduce flooding downstream.",
        f"Wildfires near {t} have burned {k * 100} hectares; evacuation orders cover four villages and schools are closed until further notice.",
        f"The museum in {t} reopened after a two-year renovation, with a new wing for children and free entry on the first {pick(WEEKDAYS)} of each month.",
    ])

def email():
    n, m, top = pick(NAMES), pick(NAMES), pick(TOPICS)
    return pick([
        f"Hi {n},\n\nJust a reminder that the meeting about {top} moves to {pick(WEEKDAYS)} at 10:00. Please send your notes beforehand.\n\nThanks,\n{m}",
        f"Dear {n}, thank you so much for covering my shifts last week. It meant a great deal while my father was in hospital. Coffee is on me. {m}",
        f"Hello, I ordered a {pick(ITEMS)} three weeks ago (order 4{R.randint(1000, 9999)}) and it still has not arrived. This is the third time I have written. Please reply.",
        f"Team, the deadline for {top} is now firm. If anything blocks you, tell me today, not on the day. {m}",
        f"{n}, congratulations on the promotion! Well deserved after the year you have had. Drinks on Friday?",
        f"Hi all, the office will be closed on {pick(WEEKDAYS)} for maintenance. Remote access works as usual. Facilities",
        f"Dear customer, your subscription will renew on the 1st. To change your plan, visit your account page. No action is needed to continue.",
        f"{n}, I am sorry about what I said in the meeting. It was unfair, and I would like to talk it over when you have a moment. {m}",
        f"Minutes, {top}: attendees {n}, {m}. Decisions: proceed with option B; {n} to draft the timeline; next review in two weeks.",
    ])

def review():
    item = pick(ITEMS)
    stars = R.randint(1, 5)
    return pick([
        f"{stars}/5. The {item} works as described. Delivery was quick and the packaging was minimal, which I appreciate.",
        f"Absolutely furious. The {item} broke after two days and customer service hung up on me twice. Never again.",
        f"I was doubtful at first, but this {item} has changed my mornings. Quiet, sturdy and it looks great. Highly recommend.",
        f"Average {item}. Does the job, nothing special. The manual is badly translated and the cable is short.",
        f"Returned it. The {item} smelled of burning plastic the first time I switched it on, and that frightened me enough to unplug it at once.",
        f"Lovely little cafe. The {pick(FOODS)} was excellent and the staff remembered our names on the second visit.",
        f"The hotel room was clean but the walls were thin; we heard every word from next door until 2 a.m.",
        f"Bought this {item} as a gift for my dad. He rang me just to say how much he likes it, which he never does.",
    ])

def recipe_or_list():
    return pick([
        f"Shopping list: eggs, oats, two lemons, {pick(FOODS).split()[-1]}, washing-up liquid, batteries (AA), bin bags.",
        f"Packing list for {pick(TOWNS)}: passport, charger, walking boots, rain jacket, {pick(ITEMS)}, snacks for the train.",
        f"Ingredients for {pick(FOODS)}: 2 onions, 3 cloves garlic, 400 g tinned tomatoes, 1 tsp cumin, salt, pepper, a handful of parsley.",
        f"To do: renew car insurance; call the dentist; return library books; fix the {pick(ITEMS)}; reply to {pick(NAMES)}.",
        f"Opening hours: Monday to Friday 9:00-17:30, Saturday 10:00-14:00, closed Sundays and public holidays.",
        f"Timetable: departs {pick(TOWNS)} 07:12, 07:42, 08:12, then every 30 minutes until 19:42. Journey time 48 minutes.",
    ])

def forum():
    return pick([
        f"Q: My {pick(ITEMS)} makes a clicking noise when it starts. Is that normal? A: Usually yes, it is the relay; if it keeps clicking, check the fuse.",
        "Has anyone else had their account locked after the update? I cannot log in and support has not answered in four days. Getting desperate here.",
        "Tip: if your sourdough is too dense, give the starter an extra feed the night before and let the dough rise somewhere warmer.",
        f"Does anyone know if the pool in {pick(TOWNS)} is open over the holidays? The website still shows last year's times.",
        "Update: the fix worked! Thank you all, I was about to give up and buy a new one.",
        "Honestly I am so tired of people parking across the cycle lane. Someone is going to get hurt.",
        f"Looking for recommendations: a quiet {pick(ITEMS)} under 100 euros that will survive a toddler.",
    ])

def facts():
    return pick([
        "The Pacific is the largest and deepest of Earth's oceans, covering about a third of the planet's surface.",
        "Photosynthesis converts light energy into chemical energy stored in glucose; oxygen is released as a by-product.",
        "A leap year has 366 days; an extra day, 29 February, is added to keep the calendar aligned with the solar year.",
        "Copper is an excellent conductor of heat and electricity and has been used by people for more than ten thousand years.",
        "The human heart beats roughly 100,000 times a day, pumping blood through about 100,000 kilometres of vessels.",
        "Honey does not spoil easily because of its low water content and acidity; edible honey has been found in ancient tombs.",
        "The metre was originally defined as one ten-millionth of the distance from the equator to the North Pole.",
        "Octopuses have three hearts and blue blood, and each arm contains a large share of the animal's neurons.",
    ])

GENRES = {"prose": (prose, 110), "instructions": (instructions, 80), "code": (code, 80),
          "news": (news, 110), "email": (email, 80), "review": (review, 70),
          "list": (recipe_or_list, 40), "forum": (forum, 50), "facts": (facts, 30)}

def main():
    out, seen = [], set()
    for genre, (fn, n) in GENRES.items():
        tries = 0
        got = 0
        while got < n and tries < n * 50:
            tries += 1
            text = fn()
            if text in seen:
                continue
            seen.add(text)
            got += 1
            out.append({"id": f"{genre}-{got:03d}", "genre": genre, "text": text})
    R.shuffle(out)
    path = Path(__file__).with_name("mixed.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for rec in out:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    counts = {g: sum(r["genre"] == g for r in out) for g in GENRES}
    print(f"{len(out)} texts -> {path}: {counts}")

if __name__ == "__main__":
    main()
