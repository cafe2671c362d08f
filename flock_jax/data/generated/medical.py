"""Medical calculation and flash-card questions with exact answers.

Templates: weight-based dose, BMI, unit conversion, IV drip rate, infusion
rate, and drug-class flash cards from a small table written for this project
(textbook classes of common drugs). Synthetic research data for testing a
training pipeline: not medical advice, and not checked by a clinician.
"""

from __future__ import annotations

import random

from flock_jax.data.example import Example
from flock_jax.data.generated.templates import D, fmt, generate

# drug -> pharmacological class (widely taught, stable facts).
DRUG_CLASSES: dict[str, str] = {
    "metformin": "biguanide",
    "lisinopril": "ACE inhibitor",
    "enalapril": "ACE inhibitor",
    "losartan": "angiotensin II receptor blocker",
    "atorvastatin": "statin",
    "simvastatin": "statin",
    "amlodipine": "calcium channel blocker",
    "metoprolol": "beta blocker",
    "propranolol": "beta blocker",
    "furosemide": "loop diuretic",
    "hydrochlorothiazide": "thiazide diuretic",
    "spironolactone": "potassium-sparing diuretic",
    "warfarin": "vitamin K antagonist",
    "clopidogrel": "P2Y12 inhibitor",
    "omeprazole": "proton pump inhibitor",
    "pantoprazole": "proton pump inhibitor",
    "famotidine": "H2 receptor antagonist",
    "sertraline": "SSRI",
    "fluoxetine": "SSRI",
    "diazepam": "benzodiazepine",
    "lorazepam": "benzodiazepine",
    "morphine": "opioid",
    "ibuprofen": "NSAID",
    "naproxen": "NSAID",
    "prednisone": "corticosteroid",
    "albuterol": "beta-2 agonist",
    "amoxicillin": "penicillin antibiotic",
    "azithromycin": "macrolide antibiotic",
    "ciprofloxacin": "fluoroquinolone antibiotic",
    "doxycycline": "tetracycline antibiotic",
    "levothyroxine": "thyroid hormone",
    "ondansetron": "5-HT3 antagonist",
    "loratadine": "antihistamine",
    "glipizide": "sulfonylurea",
}

_CONVERSIONS = (  # (from, to, factor, offset, decimals): y = (x + offset) * factor
    ("pounds", "kilograms", D("0.45359237"), D(0), 1),
    ("inches", "centimetres", D("2.54"), D(0), 1),
    ("micrograms", "milligrams", D("0.001"), D(0), 3),
    ("grams", "milligrams", D(1000), D(0), 0),
    ("degrees Fahrenheit", "degrees Celsius", D(5) / D(9), D(-32), 1),
)


def weight_dose(rng: random.Random) -> tuple[str, str, str]:
  mg_per_kg = rng.choice([D(1), D(2), D(5), D("7.5"), D(10), D("12.5"), D(15), D(20), D(25)])
  kg = D(rng.randint(30, 1200)) / 10
  doses = rng.choice([1, 2, 3, 4])
  total = mg_per_kg * kg
  if doses == 1:
    prompt = (
        f"A drug is dosed at {mg_per_kg} mg/kg once daily. What is the daily dose in mg "
        f"for a patient weighing {kg} kg? Round to one decimal place."
    )
    return prompt, f"Dose = {mg_per_kg} mg/kg * {kg} kg = {fmt(total, 1)} mg.", fmt(total, 1)
  per = total / doses
  prompt = (
      f"A drug is dosed at {mg_per_kg} mg/kg/day divided into {doses} equal doses. How "
      f"many mg is each dose for a patient weighing {kg} kg? Round to one decimal place."
  )
  working = (
      f"Daily dose = {mg_per_kg} * {kg} = {fmt(total, 2)} mg.\n"
      f"Per dose = {fmt(total, 2)} / {doses} = {fmt(per, 1)} mg."
  )
  return prompt, working, fmt(per, 1)


def bmi(rng: random.Random) -> tuple[str, str, str]:
  kg = D(rng.randint(400, 1500)) / 10
  cm = D(rng.randint(140, 205))
  m = cm / 100
  value = kg / (m * m)
  prompt = (
      f"What is the body mass index of an adult who weighs {kg} kg and is {cm} cm tall? "
      f"Round to one decimal place."
  )
  working = f"BMI = weight / height^2 = {kg} / {m}^2 = {fmt(value, 1)} kg/m^2."
  return prompt, working, fmt(value, 1)


def unit_conversion(rng: random.Random) -> tuple[str, str, str]:
  src, dst, factor, offset, places = rng.choice(_CONVERSIONS)
  x = D(rng.randint(10, 2500)) / (10 if places else 1)
  if src == "degrees Fahrenheit":
    x = D(rng.randint(950, 1060)) / 10
  y = (x + offset) * factor
  rule = "(x - 32) * 5/9" if offset else f"x * {factor}"
  prompt = f"Convert {x} {src} to {dst}." + (
      f" Round to {places} decimal place{'s' if places > 1 else ''}." if places else ""
  )
  working = f"{dst.capitalize()} = {rule} with x = {x}, giving {fmt(y, places)}."
  return prompt, working, fmt(y, places)


def iv_drip_rate(rng: random.Random) -> tuple[str, str, str]:
  ml = D(rng.randrange(250, 2001, 50))
  hours = rng.randint(1, 12)
  drop = rng.choice([10, 15, 20, 60])
  rate = ml * drop / (hours * 60)
  prompt = (
      f"Infuse {ml} mL over {hours} hour{'s' if hours > 1 else ''} with a giving set of "
      f"{drop} drops/mL. What is the drip rate in drops per minute, to the nearest whole drop?"
  )
  working = f"Rate = volume * drop factor / minutes = {ml} * {drop} / {hours * 60} = {fmt(rate, 0)} drops/min."
  return prompt, working, fmt(rate, 0)


def infusion_rate(rng: random.Random) -> tuple[str, str, str]:
  ml = D(rng.randrange(50, 3001, 10))
  hours = rng.choice([D("0.5"), D(1), D(2), D(4), D(6), D(8), D(12), D(24)])
  rate = ml / hours
  prompt = (
      f"An infusion pump must deliver {ml} mL over {hours} hours. What rate should it be "
      f"set to, in mL/h? Round to one decimal place."
  )
  return prompt, f"Rate = {ml} mL / {hours} h = {fmt(rate, 1)} mL/h.", fmt(rate, 1)


def drug_class(rng: random.Random) -> tuple[str, str, str]:
  drug = rng.choice(sorted(DRUG_CLASSES))
  cls = DRUG_CLASSES[drug]
  prompt = rng.choice(
      [f"To which drug class does {drug} belong?", f"Flash card: {drug}. Name its drug class."]
  )
  return prompt, f"{drug.capitalize()} is classed as: {cls}.", cls


TEMPLATES = (weight_dose, bmi, unit_conversion, iv_drip_rate, infusion_rate, drug_class)


def generate_medical(n: int, seed: int = 0) -> list[Example]:
  """`n` medical questions with distinct prompts, the same for the same seed."""
  return generate("medical", TEMPLATES, n, seed)
