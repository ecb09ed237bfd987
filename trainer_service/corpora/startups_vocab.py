"""Vocabulary and sentence templates for the generated "startups" built-in corpus (plain ASCII only)."""

# fmt: off

NAME_ROOTS: tuple[str, ...] = (
    "Drift", "Bolt", "Lumen", "Tide", "Quill", "Fern", "Nimbus", "Arc", "Pivot", "Harbor",
    "Cobalt", "Ember", "Vanta", "Kite", "Orbit", "Sprout", "Granite", "Juniper", "Mosaic", "Ripple",
    "Summit", "Torch", "Vela", "Willow", "Zephyr", "Atlas", "Beacon", "Cedar", "Delta", "Echo",
    "Flint", "Glide", "Haven", "Iris", "Jolt", "Keel", "Ledger", "Maple", "Nova", "Onyx",
    "Prism", "Quarry", "Relay", "Sable", "Tandem", "Umber", "Vivid", "Wren", "Yonder", "Zest",
    "Anchor", "Bramble", "Canopy", "Dapple", "Fathom", "Gable", "Hatch", "Inlet", "Lark", "Meadow",
    "Nest", "Otter", "Pebble", "Rook", "Slate", "Thistle", "Vault", "Wick", "Crisp", "Spool",
)
NAME_SUFFIXES: tuple[str, ...] = (
    "ly", "ify", "io", "hub", "wise", "base", "loop", "stack", "works", "labs",
    "flow", "path", "grid", "mint", "desk", "yard", "line", "bit", "craft", "ware",
    "scope", "kit", "ops", "sense", "nest",
)
NAME_WORDS: tuple[str, ...] = (
    "AI", "Labs", "Health", "Robotics", "Systems", "Logistics", "Energy", "Finance",
)
STAGES: tuple[str, ...] = ("Pre-seed", "Seed", "Series A", "Series B")
ASK_RANGES: dict[str, tuple[int, int]] = {
    "Pre-seed": (3, 15), "Seed": (15, 60), "Series A": (60, 200), "Series B": (200, 600),
}
CITIES: tuple[str, ...] = (
    "Austin", "Denver", "Boston", "Seattle", "Chicago", "Atlanta", "Detroit", "Pittsburgh", "Nashville",
    "San Francisco", "Brooklyn", "Miami", "Portland", "Toronto", "Montreal", "Vancouver", "London",
    "Berlin", "Paris", "Amsterdam", "Stockholm", "Lisbon", "Dublin", "Tel Aviv", "Bangalore", "Singapore",
    "Jakarta", "Lagos", "Nairobi", "Sao Paulo", "Mexico City", "Bogota", "Sydney", "Auckland", "Seoul",
    "Tokyo", "Salt Lake City", "Raleigh", "Columbus", "Minneapolis", "Phoenix", "Madison",
)
CUSTOMERS: tuple[str, ...] = (
    "independent pharmacies", "regional trucking fleets", "dental clinics", "family-owned restaurants",
    "community banks", "construction subcontractors", "veterinary hospitals", "boutique gyms",
    "property managers", "freight brokers", "rural hospitals", "craft breweries", "public school districts",
    "boutique hotels", "solar installers", "HVAC contractors", "auto repair shops", "wedding planners",
    "food banks", "independent bookstores", "small law firms", "home health agencies", "car dealerships",
    "coffee roasters", "direct-to-consumer brands", "municipal water utilities", "grocery co-ops",
    "daycare centers", "airport ground crews", "physical therapy practices", "landscaping companies",
    "film production crews", "local newspapers", "moving companies", "plumbing contractors",
    "florists", "pet groomers", "charter schools", "senior living communities", "dairy farms",
    "vineyards", "recycling centers", "warehouse operators", "bike shops", "hair salons",
    "tutoring centers", "event venues", "marinas", "museums", "community theaters", "cold storage operators",
    "electric utilities", "mining contractors", "port terminals", "clinical research sites",
    "insurance agencies", "accounting firms", "architecture studios", "furniture makers", "bakeries",
    "fishing cooperatives", "car wash chains", "youth sports leagues", "city transit agencies",
)
PERSONAS: tuple[str, ...] = (
    "store manager", "clinic administrator", "fleet dispatcher", "head chef", "office manager",
    "site supervisor", "warehouse lead", "practice owner", "finance director", "operations manager",
    "night shift nurse", "front desk coordinator", "project manager", "plant manager", "bookkeeper",
)
VERBS: tuple[str, ...] = (
    "cut", "reduce", "eliminate", "slash", "shrink", "get ahead of", "stop losing money to",
    "put an end to", "fight", "tame", "halve", "take control of",
)
PAINS: tuple[str, ...] = (
    "inventory waste", "missed appointments", "late invoice payments", "manual data entry", "chargebacks",
    "employee turnover", "compliance paperwork", "unplanned downtime", "expired stock", "double bookings",
    "fuel costs", "insurance claim denials", "shrinkage", "overtime costs", "billing errors",
    "wasted ad spend", "slow onboarding", "customer churn", "food waste", "energy bills", "scheduling chaos",
    "equipment theft", "warranty fraud", "stockouts", "empty truck miles", "permit delays",
    "spoiled shipments", "phone tag with suppliers", "no-show patients", "unpaid overtime disputes",
    "water leaks", "audit surprises", "safety incidents", "lost paperwork", "price gouging by suppliers",
    "idle equipment", "slow payroll", "cash flow gaps", "returned orders", "bad reviews",
)
DOMAINS: tuple[str, ...] = (
    "scheduling", "inventory", "compliance paperwork", "billing", "payroll", "maintenance", "procurement",
    "customer support", "hiring", "dispatch", "quality control", "pricing", "bookkeeping", "training",
)
STATUS_QUO: tuple[str, ...] = (
    "spreadsheets and phone calls", "clipboards and fax machines", "a whiteboard in the back office",
    "sticky notes and memory", "a twenty-year-old desktop program", "email threads and guesswork",
    "paper binders", "a patchwork of free apps", "one overworked person", "text messages and hope",
)
TRIGGERS: tuple[str, ...] = (
    "a key employee goes on vacation", "volume doubles", "an auditor shows up", "a supplier changes prices",
    "the busy season starts", "a second location opens", "a storm knocks out the power",
    "a big customer asks for a report", "regulations change", "a shipment arrives late",
)
PRODUCTS: tuple[str, ...] = (
    "a mobile app", "an API", "a browser extension", "a Slack bot", "a hardware sensor", "a marketplace",
    "a no-code dashboard", "an AI copilot", "a SaaS platform", "a voice assistant", "a smart label",
    "a tablet app", "a text-message service", "a plug-in for existing software", "a small rooftop device",
    "an autonomous cart", "a data clean room", "a payments platform", "a wearable badge", "a camera kit",
)
PRODUCT_NOUNS: tuple[str, ...] = (
    "platform", "app", "engine", "assistant", "dashboard", "software", "system", "service", "device",
)
TECHS: tuple[str, ...] = (
    "computer vision", "large language models", "graph databases", "edge computing", "federated learning",
    "satellite imagery", "RFID tags", "on-device speech recognition", "zero-knowledge proofs",
    "digital twins", "reinforcement learning", "time-series forecasting", "optical character recognition",
    "low-power radio networks", "thermal imaging", "open banking APIs", "lidar", "bluetooth beacons",
    "synthetic data", "causal inference", "vector search", "acoustic sensing", "robotic arms",
)
FEATURES: tuple[str, ...] = (
    "predicts demand a week ahead", "turns photos into purchase orders", "routes every request automatically",
    "writes the first draft of every report", "flags problems before they become emergencies",
    "books, confirms, and reminds without a human in the loop", "reconciles payments overnight",
    "answers the phone when nobody else can", "tracks every asset in real time",
    "fills out the forms regulators ask for", "spots anomalies in seconds", "plans the day in one tap",
    "negotiates with suppliers on autopilot", "translates instructions for multilingual crews",
    "keeps a live map of everything in stock", "scores every lead by likelihood to buy",
    "checks work against the spec before anyone signs off", "sends the right reminder at the right time",
)
SACRIFICES: tuple[str, ...] = (
    "hiring more staff", "changing how they work", "new hardware", "a six-month rollout",
    "an IT department", "giving up control of their data", "long contracts", "any training",
)
INPUTS: tuple[str, ...] = (
    "scanned receipts", "handwritten notes", "security camera footage", "call recordings", "sensor readings",
    "supplier emails", "PDF contracts", "shelf photos", "voice memos", "delivery logs", "meter readings",
    "customer reviews", "drone flyovers", "old invoices",
)
OUTPUTS: tuple[str, ...] = (
    "clean ledgers", "daily action lists", "compliance reports", "reorder suggestions",
    "searchable dashboards",
    "ready-to-sign quotes", "maintenance schedules", "staffing plans", "insurance claims", "price updates",
    "route plans", "weekly forecasts",
)
BENEFITS: tuple[str, ...] = (
    "close the books in days instead of weeks", "spend their mornings on customers instead of spreadsheets",
    "see problems before they become fires", "onboard new staff in an afternoon",
    "stop guessing and start planning", "serve more customers with the same team",
    "sleep through the night without a pager", "pass audits without the panic",
    "get paid faster", "grow without hiring a back office",
)
INTEGRATIONS: tuple[str, ...] = (
    "QuickBooks", "Shopify", "Salesforce", "Slack", "existing point-of-sale systems", "Google Sheets",
    "most electronic health record systems", "the tools teams already use", "Microsoft Teams",
    "every major payroll provider", "standard accounting software",
)
SETUP_TIMES: tuple[str, ...] = (
    "ten minutes", "under an hour", "one afternoon", "a single phone call", "less than a day", "two clicks",
)
COMPETITORS: tuple[str, ...] = (
    "legacy enterprise vendors", "generic CRMs", "offshore agencies", "spreadsheets", "consultants",
    "point solutions", "the incumbents", "horizontal tools", "in-house IT projects",
)
DIFFERENTIATORS: tuple[str, ...] = (
    "works offline in the field", "charges only when it saves money", "is live in a day instead of a quarter",
    "speaks the language of the front line", "needs zero IT support",
    "runs on the phones workers already carry", "was built with the people who use it every day",
    "gets smarter with every customer", "keeps all data on site",
)
ACTIONS: tuple[str, ...] = (
    "snap a photo", "forward an email", "connect their bank account", "upload last year's records",
    "answer five questions", "scan a barcode", "text a phone number", "plug in a sensor",
)
TECH_GOALS: tuple[str, ...] = (
    "catch errors humans miss", "predict demand down to the hour", "keep every record audit-ready",
    "match supply and demand in real time", "price jobs accurately", "spot fraud before it clears",
    "schedule crews around traffic and weather", "detect failures weeks in advance",
)
THINGS: tuple[str, ...] = (
    "labeled images", "shipping events", "support conversations", "invoices", "sensor hours",
    "appointments", "repair tickets", "transactions", "inspection reports", "recorded calls",
)
INFRAS: tuple[str, ...] = (
    "a lightweight edge device", "the customer's own cloud account", "a single phone",
    "commodity hardware", "a box the size of a paperback",
)
INFRA_BENEFITS: tuple[str, ...] = (
    "data never leaves the building", "it keeps working when the internet does not",
    "costs stay low even at scale", "IT teams approve it in a single meeting",
)
MONTHS: tuple[str, ...] = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)
VOLUME_UNITS: tuple[str, ...] = (
    "orders", "claims", "shipments", "appointments", "invoices", "support tickets", "work orders", "payments",
)
SCHOOLS: tuple[str, ...] = (
    "Stanford", "MIT", "Georgia Tech", "the University of Michigan", "Waterloo", "Carnegie Mellon",
    "a community college night class", "a hackathon in Berlin", "IIT Bombay", "Oxford",
    "a startup accelerator",
    "the University of Texas", "ETH Zurich", "a summer internship",
)
PASTS: tuple[str, ...] = (
    "built logistics software for a national grocery chain",
    "ran operations for a 40-location restaurant group",
    "sold medical devices across the Midwest", "worked on fraud detection at a large bank",
    "managed a fleet of 300 delivery vans", "founded and sold a payroll startup",
    "spent a decade inside the industry they now serve", "led product at a fast-growing fintech company",
)
FIRST_NAMES: tuple[str, ...] = (
    "Maya", "Daniel", "Priya", "Marcus", "Elena", "Kwame", "Sofia", "Liam", "Aisha", "Tomas", "Hannah",
    "Ravi", "Grace", "Mateo", "Chloe", "Omar", "Naomi", "Jonah", "Leila", "Victor", "Ingrid", "Samuel",
    "Yuki", "Amara", "Felix", "Rosa", "Dmitri", "Zara", "Caleb", "Mei",
)
LAST_NAMES: tuple[str, ...] = (
    "Chen", "Okafor", "Patel", "Lindqvist", "Rivera", "Nakamura", "Osei", "Kowalski", "Haddad", "Murphy",
    "Silva", "Brennan", "Kim", "Novak", "Adeyemi", "Larsen", "Gupta", "Moreau", "Schmidt", "Torres",
    "Abbott", "Yilmaz", "Fischer", "Mensah", "Costa", "Walsh", "Ito", "Duarte", "Reyes", "Singh",
)
ROLES: tuple[str, ...] = (
    "an operations lead", "a product manager", "a data scientist", "a supply chain analyst",
    "a registered nurse", "a software engineer", "a management consultant", "a regional sales director",
    "a pharmacist", "a field technician", "an investment banker", "a restaurant owner",
)
ORGS: tuple[str, ...] = (
    "a national grocery chain", "a top-five bank", "a large hospital network", "a global shipping company",
    "a Big Four accounting firm", "a ride-sharing company", "a major airline", "a federal agency",
    "a big-box retailer", "a leading e-commerce marketplace", "an electric utility", "a game studio",
)
CTO_BACKGROUNDS: tuple[str, ...] = (
    "led machine learning at a major ride-sharing company",
    "scaled the infrastructure team at a payments startup",
    "holds a PhD in robotics", "maintains a popular open-source database library",
    "built trading systems on Wall Street", "shipped embedded firmware for industrial sensors",
    "was an early engineer at a unicorn in the same space", "designed search ranking for a large marketplace",
)
TEAM_DETAILS: tuple[str, ...] = (
    "three engineers from a self-driving car company", "a former state regulator",
    "veterans of two successful exits", "a designer who spent years on the shop floor",
    "two former customers who quit their jobs to join", "a head of sales who opened the first 100 accounts",
    "a data team recruited from a national lab", "an advisor who ran the largest company in the industry",
)
PARTNERS: tuple[str, ...] = (
    "two national distributors", "a top insurance carrier", "the largest trade association in the field",
    "a major hardware manufacturer", "three state governments", "a leading payroll provider",
)
REGIONS: tuple[str, ...] = (
    "the Midwest", "Europe", "Latin America", "Southeast Asia", "Canada", "the Gulf Coast", "the UK",
    "the Pacific Northwest", "West Africa", "Australia", "the Nordics", "India",
)
USES: tuple[str, ...] = (
    "hire a sales team", "expand into {region}", "double the engineering team",
    "launch a second product line",
    "build out customer success", "get certified for enterprise buyers", "open an office in {region}",
    "scale manufacturing", "finish regulatory approval", "grow the partner channel",
)
UNITS: tuple[str, ...] = (
    "seat", "location", "truck", "clinic", "store", "user", "site", "device", "crew", "bed",
)
REVENUE_MODELS: tuple[str, ...] = (
    "a monthly subscription plus a small fee per transaction",
    "annual licenses sold to headquarters and rolled out location by location",
    "a share of the savings it delivers", "a freemium app with a paid team plan",
    "hardware leases bundled with software", "a take rate on every booking",
)
BRANDS: tuple[str, ...] = (
    "Uber", "Airbnb", "Stripe", "Shopify", "Notion", "Figma", "Duolingo", "Spotify", "Zillow", "Netflix",
    "GitHub", "Zapier", "Canva", "Peloton", "Etsy", "Waze", "Venmo", "Slack",
)
TAGLINES: tuple[str, ...] = (
    "less paperwork, more people", "the back office that never sleeps", "run the floor, not the spreadsheet",
    "every minute counted, every dollar found", "software that shows up for work",
    "small teams, big operations", "from chaos to checklist", "the calm in the busy season",
    "plan less, do more", "built for the people who keep things running",
)
AMBITIONS: tuple[str, ...] = (
    "the default back office for every small business", "the operating system for {customer}",
    "the first call every {persona} makes in the morning", "the system of record for {domain}",
    "the reason nobody talks about {pain} anymore", "a public company with thousands of employees",
)

OPENERS: tuple[str, ...] = (
    "{name} helps {customer} {verb} {pain} with {product} built on {tech}.",
    "{name} is {product} that lets {customer} {verb} {pain} without {sacrifice}.",
    "{name} gives {customer} {product} that {feature}.",
    "Meet {name}: {product} for {customer} that {feature}.",
    "{name} turns {input} into {output} for {customer}.",
    "Founded in {city} in {year}, {name} builds {product} that helps {customer} {verb} {pain}.",
)
MIDDLES: tuple[tuple[str, ...], ...] = (
    (  # problem
        "Today {customer} lose {hours} hours a week to {pain}, and most still rely on {status_quo}.",
        "{Pain} costs {customer} an estimated ${billions} billion every year.",
        "Most {customer} still manage {domain} with {status_quo}, which breaks the moment {trigger}.",
        "Ask any {persona} and they will tell you that {pain} is the worst part of the job.",
    ),
    (  # solution
        "The {product_noun} {feature}, so teams can {benefit}.",
        "Setup takes {setup_time}, and {name} plugs into {integration} out of the box.",
        "Unlike {competitor}, {name} {differentiator}.",
        "Customers simply {action}, and {name} handles the rest.",
    ),
    (  # technology
        "Under the hood, {name} combines {tech} with {tech2} to {tech_goal}.",
        "The core model is trained on {millions} million {things}, a dataset no competitor can easily copy.",
        "Everything {name} does runs on {infra}, so {infra_benefit}.",
    ),
    (  # traction
        "Since launching in {month} {year}, {name} has signed {customers_n} paying customers"
        " and reached ${mrr}k in monthly recurring revenue.",
        "Revenue is growing {growth}% month over month, with net revenue retention of {nrr}%.",
        "{pilots} {customer} are running paid pilots, and {converted} have already signed annual contracts.",
        "The waitlist has grown to {waitlist} {customer} without any paid marketing.",
        "Customers report {improvement}% less {pain} within their first {weeks} weeks on {name}.",
        "{name} processed {volume} {volume_unit} last quarter, up {multiple}x from the quarter before.",
    ),
    (  # team
        "The founders of {name} met at {school} and previously {past}.",
        "CEO {first} {last} spent {years} years as {role} at {org},"
        " and CTO {first2} {last2} {cto_background}.",
        "The team of {team_size} includes {team_detail}.",
    ),
    (  # market and business model
        "There are over {count} {customer} in {region} alone, a ${market} billion opportunity.",
        "Analysts expect spending on {domain} software to reach ${market} billion by {future_year}.",
        "{name} starts with {customer} and expands into {customer2} next.",
        "{name} charges ${price} per {unit} per month, with gross margins above {margin}%.",
        "Pricing starts at ${price} per month, and the average contract is worth ${acv}k a year.",
        "{name} makes money through {revenue_model}.",
        "{name} holds {patents} pending patents and an exclusive partnership with {partner}.",
    ),
)
ASKS: tuple[str, ...] = (
    "{name} is raising a ${ask}M {stage} round to {use} and {use2}.",
    "The company is raising ${ask}M to {use}.",
    "With ${ask}M in new funding, {name} will {use} over the next {months} months.",
)
CLOSERS: tuple[str, ...] = (
    "Think {brand} for {customer}.",
    "The {name} tagline says it all: {tagline}.",
    "{name}: {tagline}.",
    "In five years, {name} wants to be {ambition}.",
    "In short, {name} is {brand} for {domain}.",
)

# Template fields filled with one random choice from their list, once per pitch.
SLOT_CHOICES: dict[str, tuple[str, ...]] = {
    "stage": STAGES, "city": CITIES, "persona": PERSONAS, "verb": VERBS, "pain": PAINS, "domain": DOMAINS,
    "region": REGIONS, "status_quo": STATUS_QUO, "trigger": TRIGGERS, "product": PRODUCTS,
    "product_noun": PRODUCT_NOUNS, "feature": FEATURES, "sacrifice": SACRIFICES, "input": INPUTS,
    "output": OUTPUTS, "benefit": BENEFITS, "integration": INTEGRATIONS, "setup_time": SETUP_TIMES,
    "competitor": COMPETITORS, "differentiator": DIFFERENTIATORS, "action": ACTIONS, "tech_goal": TECH_GOALS,
    "things": THINGS, "infra": INFRAS, "infra_benefit": INFRA_BENEFITS, "month": MONTHS,
    "volume_unit": VOLUME_UNITS, "school": SCHOOLS, "past": PASTS, "first": FIRST_NAMES, "last": LAST_NAMES,
    "first2": FIRST_NAMES, "last2": LAST_NAMES, "role": ROLES, "org": ORGS, "cto_background": CTO_BACKGROUNDS,
    "team_detail": TEAM_DETAILS, "partner": PARTNERS, "unit": UNITS, "revenue_model": REVENUE_MODELS,
    "brand": BRANDS, "tagline": TAGLINES,
}
